"""Static checks of uploaded model files: read as data, never loaded or run.

Every check here costs milliseconds and imports neither TensorFlow nor Keras, so
it runs in the API process before a model runner is started:

- `check_archive`: the zip itself (member names in normal form and each once,
  links, encryption, declared sizes and compression ratios, read without
  extracting anything);
- `check_keras_config`: a .keras file's config.json, walked against an allow-list
  of Keras classes (no Lambda, no module or function outside Keras, no file paths);
- `check_savedmodel_graph`: the operations a SavedModel can run, followed from its
  `serving_default` signature and from what `tf.saved_model.load` itself runs,
  against an allow-list of inference operations (no file, dataset, Python,
  process or network operations); an object graph the loader could read
  differently from the scan is refused.

Each raises `ModelFileError` with the reason. Allow-lists fail closed: what is
not listed is refused, and the message names it. `refusals_in_client_words`
keeps raw exception texts and server paths out of what a client is told.
"""

import functools
import json
import logging
import re
import stat
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

log = logging.getLogger(__name__)


class ModelFileError(ValueError):
    """The upload is not a model Sibyl accepts; the message says what to do."""


# --- the zip ------------------------------------------------------------------------

MAX_MEMBERS = 10_000
# Deflate reaches ~1000:1 only on degenerate data; weights and graphs stay far below.
MAX_COMPRESSION_RATIO = 200
RATIO_FLOOR_BYTES = 1024 * 1024  # small members may compress as they like
ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")
# Linux's limit for one name; a whole path stays well below PATH_MAX once the
# temporary folder it is unpacked into is put before it.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 1024


def check_archive(archive: zipfile.ZipFile, max_unpacked_bytes: int) -> None:
    """Refuse zips that could escape their folder or unpack to far more than they weigh.

    Sizes are the ones the zip declares: Python's zipfile (which Sibyl, Keras and
    h5py read members through) never produces more bytes than a member declares.
    """
    members = archive.infolist()
    if len(members) > MAX_MEMBERS:
        raise ModelFileError(f"the archive has {len(members)} files; at most {MAX_MEMBERS}")
    check_member_names(archive)
    unpacked = 0
    for member in members:
        if stat.S_ISLNK(member.external_attr >> 16):
            raise ModelFileError(f"the archive holds a symbolic link ({member.filename!r})")
        if member.flag_bits & 0x1:
            raise ModelFileError(f"the archive holds an encrypted file ({member.filename!r})")
        if member.compress_type not in ZIP_METHODS:
            raise ModelFileError(
                f"{member.filename!r} is compressed with method {member.compress_type}; "
                "only stored and deflated files are accepted"
            )
        if member.file_size > RATIO_FLOOR_BYTES and member.file_size > MAX_COMPRESSION_RATIO * max(
            member.compress_size, 1
        ):
            raise ModelFileError(
                f"{member.filename!r} unpacks to {member.file_size} bytes from "
                f"{member.compress_size}: a compression ratio above "
                f"{MAX_COMPRESSION_RATIO}:1 (a zip bomb?)"
            )
        unpacked += member.file_size
        if unpacked > max_unpacked_bytes:
            raise ModelFileError(
                f"the archive declares more than {max_unpacked_bytes} bytes unpacked "
                "(a zip bomb?): models may unpack to at most that"
            )


def check_member_names(archive: zipfile.ZipFile) -> None:
    """Every member's name is the path it unpacks to, and names each path once.

    zipfile.extractall drops `.`, `..` and empty components, so `m/./x` would
    overwrite `m/x` once unpacked: a name must already be in that normal form, and
    duplicates are then plain. Keras reads a .keras file's members by exact name.
    """
    entries: set[str] = set()
    files: set[str] = set()
    folders: set[str] = set()
    for name in archive.namelist():
        check_member_name(name)
        path = name.removesuffix("/")  # a folder's own entry ends with "/"
        if path in entries:
            raise ModelFileError(f"the archive holds {path[:100]!r} twice")
        entries.add(path)
        (folders if name.endswith("/") else files).add(path)
        folders.update(str(parent) for parent in PurePosixPath(path).parents)
    clash = files & folders
    if clash:
        raise ModelFileError(
            f"the archive holds {min(clash)[:100]!r} both as a file and as a folder"
        )


def check_member_name(name: str) -> None:
    """A member's path stays inside the folder it is unpacked into, on any system, and
    is written in normal form (no `.` or empty components)."""
    parts = name.removesuffix("/").split("/")
    if (
        name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or WINDOWS_DRIVE.match(name)
        or ".." in parts
    ):
        raise ModelFileError(f"the archive has paths outside its own folder ({name[:100]!r})")
    if any(part in ("", ".") for part in parts):
        raise ModelFileError(
            f"the archive has a path with '.' or empty components ({name[:100]!r}): "
            "zip the model's folder again with a zip tool"
        )
    if len(name.encode()) > MAX_PATH_BYTES or any(
        len(part.encode()) > MAX_NAME_BYTES for part in parts
    ):
        raise ModelFileError(
            f"a file name in the archive is too long: at most {MAX_NAME_BYTES} bytes "
            f"per name and {MAX_PATH_BYTES} per path"
        )


# --- .keras: config.json ------------------------------------------------------------

KERAS_MEMBERS = {"config.json", "metadata.json", "model.weights.h5"}
MAX_CONFIG_BYTES = 16 * 1024 * 1024
MAX_CONFIG_DEPTH = 64

# The classes a config may name, by the module Keras writes next to them: Keras
# 3's public modelling API (keras.layers, keras.initializers, ...), without
# Lambda (Python code), TFSMLayer (loads a SavedModel from a path), the JAX,
# Flax and PyTorch wrappers, and the abstract bases. Keras 3 serialises a class
# under its public module (keras.layers.Dense), Functional under its own.
_LAYERS = """
    Activation ActivityRegularization Add AdditiveAttention AlphaDropout Attention
    Average AveragePooling1D AveragePooling2D AveragePooling3D AvgPool1D AvgPool2D
    AvgPool3D BatchNormalization Bidirectional CategoryEncoding CenterCrop Concatenate
    Conv1D Conv1DTranspose Conv2D Conv2DTranspose Conv3D Conv3DTranspose ConvLSTM1D
    ConvLSTM2D ConvLSTM3D Convolution1D Convolution1DTranspose Convolution2D
    Convolution2DTranspose Convolution3D Convolution3DTranspose Cropping1D Cropping2D
    Cropping3D Dense DepthwiseConv1D DepthwiseConv2D Discretization Dot Dropout ELU
    EinsumDense Embedding Flatten GRU GRUCell GaussianDropout GaussianNoise
    GlobalAveragePooling1D GlobalAveragePooling2D GlobalAveragePooling3D
    GlobalAvgPool1D GlobalAvgPool2D GlobalAvgPool3D GlobalMaxPool1D GlobalMaxPool2D
    GlobalMaxPool3D GlobalMaxPooling1D GlobalMaxPooling2D GlobalMaxPooling3D
    GroupNormalization GroupQueryAttention HashedCrossing Hashing Identity InputLayer
    IntegerLookup LSTM LSTMCell LayerNormalization LeakyReLU Masking MaxPool1D
    MaxPool2D MaxPool3D MaxPooling1D MaxPooling2D MaxPooling3D Maximum Minimum
    MultiHeadAttention Multiply Normalization PReLU Permute RMSNormalization RNN ReLU
    RepeatVector Rescaling Reshape Resizing SeparableConv1D SeparableConv2D
    SeparableConvolution1D SeparableConvolution2D SimpleRNN SimpleRNNCell Softmax
    SpatialDropout1D SpatialDropout2D SpatialDropout3D StackedRNNCells StringLookup
    Subtract TextVectorization TimeDistributed UnitNormalization UpSampling1D
    UpSampling2D UpSampling3D ZeroPadding1D ZeroPadding2D ZeroPadding3D
"""
_INITIALIZERS = """
    Constant GlorotNormal GlorotUniform HeNormal HeUniform Identity IdentityInitializer
    LecunNormal LecunUniform Ones Orthogonal OrthogonalInitializer RandomNormal
    RandomUniform TruncatedNormal VarianceScaling Zeros
"""
_OPTIMIZERS = """
    Adadelta Adafactor Adagrad Adam AdamW Adamax Ftrl Lamb Lion Nadam RMSprop SGD
"""
_SCHEDULES = """
    CosineDecay CosineDecayRestarts ExponentialDecay InverseTimeDecay
    PiecewiseConstantDecay PolynomialDecay
"""
_LOSSES = """
    BinaryCrossentropy BinaryFocalCrossentropy CategoricalCrossentropy
    CategoricalFocalCrossentropy CategoricalHinge CosineSimilarity Hinge Huber
    KLDivergence LogCosh MeanAbsoluteError MeanAbsolutePercentageError MeanSquaredError
    MeanSquaredLogarithmicError Poisson SparseCategoricalCrossentropy SquaredHinge
"""
_METRICS = """
    AUC Accuracy BinaryAccuracy BinaryCrossentropy BinaryIoU CategoricalAccuracy
    CategoricalCrossentropy CategoricalHinge CosineSimilarity F1Score FBetaScore
    FalseNegatives FalsePositives Hinge IoU KLDivergence LogCoshError Mean
    MeanAbsoluteError MeanAbsolutePercentageError MeanIoU MeanSquaredError
    MeanSquaredLogarithmicError OneHotIoU OneHotMeanIoU Poisson Precision
    PrecisionAtRecall R2Score Recall RecallAtPrecision RootMeanSquaredError
    SensitivityAtSpecificity SparseCategoricalAccuracy SparseCategoricalCrossentropy
    SparseTopKCategoricalAccuracy SpecificityAtSensitivity SquaredHinge Sum
    TopKCategoricalAccuracy TrueNegatives TruePositives
"""
KERAS_CLASSES: dict[str, frozenset[str]] = {
    module: frozenset(names.split())
    for module, names in {
        "keras": "Sequential Model DTypePolicy FloatDTypePolicy",
        "keras.models": "Sequential Model",
        "keras.src.models.functional": "Functional",
        "keras.dtype_policies": "DTypePolicy FloatDTypePolicy",
        "keras.layers": _LAYERS,
        "keras.initializers": _INITIALIZERS,
        "keras.regularizers": "L1 L1L2 L2 OrthogonalRegularizer",
        "keras.constraints": "MaxNorm MinMaxNorm NonNeg UnitNorm",
        "keras.optimizers": _OPTIMIZERS,
        "keras.optimizers.schedules": _SCHEDULES,
        "keras.losses": _LOSSES,
        "keras.metrics": _METRICS,
    }.items()
}
# Functions a config may name as {"class_name": "function", ...}: activations, and
# the losses and metrics of a compile_config.
_ACTIVATIONS = """
    celu elu exponential gelu glu hard_shrink hard_sigmoid hard_silu hard_swish hard_tanh
    leaky_relu linear log_sigmoid log_softmax mish relu relu6 selu sigmoid silu
    soft_shrink softmax softplus softsign sparse_plus sparse_sigmoid sparsemax squareplus
    swish tanh tanh_shrink threshold
"""
_LOSS_FUNCTIONS = """
    binary_crossentropy binary_focal_crossentropy categorical_crossentropy
    categorical_focal_crossentropy categorical_hinge cosine_similarity hinge huber
    kl_divergence log_cosh mean_absolute_error mean_absolute_percentage_error
    mean_squared_error mean_squared_logarithmic_error poisson
    sparse_categorical_crossentropy squared_hinge
"""
_METRIC_FUNCTIONS = (
    _LOSS_FUNCTIONS
    + """
    binary_accuracy categorical_accuracy sparse_categorical_accuracy
    sparse_top_k_categorical_accuracy top_k_categorical_accuracy
"""
)
KERAS_FUNCTIONS: dict[str, frozenset[str]] = {
    "keras.activations": frozenset(_ACTIVATIONS.split()),
    "keras.losses": frozenset(_LOSS_FUNCTIONS.split()),
    "keras.metrics": frozenset(_METRIC_FUNCTIONS.split()) - {"cosine_similarity"},
}
# Values, not code: Keras turns these into tensors, arrays, bytes or slices.
KERAS_DATA_CLASSES = {
    "__keras_tensor__",
    "__tensor__",
    "__numpy__",
    "__bytes__",
    "__ellipsis__",
    "__slice__",
}
# A string naming a file: lookup layers read their vocabulary from one when given a path.
PATH_LIKE = re.compile(r"[/\\]|^~")
FILE_KEYS = {"vocabulary", "idf_weights", "filepath", "file_path", "path", "filename"}


def check_keras_archive(archive: zipfile.ZipFile) -> None:
    """A .keras file: only its three known members, each once, and a config.json that
    names only Keras."""
    check_member_names(archive)
    extra = sorted(set(archive.namelist()) - KERAS_MEMBERS)
    if extra:
        raise ModelFileError(
            f"the .keras file holds files other than {', '.join(sorted(KERAS_MEMBERS))} "
            f"({', '.join(extra[:5])}): assets, such as a lookup layer's vocabulary, "
            "are not accepted"
        )
    info = archive.getinfo("config.json")
    if info.file_size > MAX_CONFIG_BYTES:
        raise ModelFileError(f"config.json is {info.file_size} bytes; at most {MAX_CONFIG_BYTES}")
    try:
        config = json.loads(archive.read("config.json"))
    except (ValueError, RecursionError):
        raise ModelFileError("config.json is not valid JSON") from None
    check_keras_config(config)


def check_keras_config(config) -> None:
    """Walk a Keras config: every object it names must be on the allow-list, no value a path."""
    for path, key, value in _walk(config, "config", None, 0):
        if isinstance(value, dict) and "class_name" in value:
            _check_keras_object(path, value)
        # A dict's string values are settings; list items (a vocabulary's words) are data.
        elif (
            isinstance(value, str)
            and key is not None
            and (key in FILE_KEYS or PATH_LIKE.search(value))
        ):
            # The value is not quoted: a path of the server never reaches a client.
            raise ModelFileError(
                f"config.json: {path} is a file path: a model may not read files of the "
                "server (a lookup layer's vocabulary must be given as a list)"
            )


def _walk(
    value, path: str, key: str | None, depth: int
) -> Iterator[tuple[str, str | None, object]]:
    """(path, its key in a dict or None in a list, value) for every value, depth first."""
    if depth > MAX_CONFIG_DEPTH:
        raise ModelFileError(f"config.json is nested more than {MAX_CONFIG_DEPTH} deep")
    yield path, key, value
    if isinstance(value, dict):
        for name, item in value.items():
            yield from _walk(item, f"{path}/{name}", str(name), depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, f"{path}/{index}", None, depth + 1)


def _check_keras_object(path: str, node: dict) -> None:
    class_name, module = node.get("class_name"), node.get("module")
    registered = node.get("registered_name")
    if class_name == "__lambda__" or (module, class_name) == ("keras.layers", "Lambda"):
        raise ModelFileError(
            f"config.json: {path} is a Lambda layer (Python code): not accepted; "
            "use built-in layers"
        )
    if class_name in KERAS_DATA_CLASSES and module is None:
        return
    if class_name == "function":
        function = node.get("config")
        if function in KERAS_FUNCTIONS.get(module, ()) and registered in (None, function):
            return
        raise ModelFileError(
            f"config.json: {path} names the function {module}.{function}: only Keras "
            "activations, losses and metrics are accepted"
        )
    if not isinstance(class_name, str) or class_name not in KERAS_CLASSES.get(module, ()):
        raise ModelFileError(
            f"config.json: {path} names {module}.{class_name}, which is not a Keras class "
            "Sibyl accepts (custom classes, Lambda and TFSMLayer layers, and modules "
            "outside Keras are refused)"
        )
    if registered not in (None, class_name):
        raise ModelFileError(
            f"config.json: {path} has registered_name {registered!r}: custom objects "
            "are not accepted"
        )


# --- SavedModel: the operations it can run -------------------------------------------

# The fields of TensorFlow's protos that the scan reads (saved_model.proto,
# meta_graph.proto, graph.proto, function.proto, node_def.proto, attr_value.proto,
# saved_object_graph.proto), with TensorFlow's field numbers: protobuf parses the
# file without TensorFlow, and skips every field not named here. Maps are written
# as their wire form, a repeated entry of key = 1 and value = 2.
_PROTO_FIELDS: dict[str, dict[str, tuple[int, str, bool]]] = {
    "SavedModel": {"meta_graphs": (2, "MetaGraphDef", True)},
    "MetaGraphDef": {
        "graph_def": (2, "GraphDef", False),
        "object_graph_def": (7, "SavedObjectGraph", False),
    },
    "GraphDef": {"library": (2, "FunctionDefLibrary", False)},
    "FunctionDefLibrary": {"function": (1, "FunctionDef", True)},
    "FunctionDef": {"signature": (1, "OpDef", False), "node_def": (3, "NodeDef", True)},
    "OpDef": {"name": (1, "string", False)},
    "NodeDef": {
        "name": (1, "string", False),
        "op": (2, "string", False),
        "attr": (5, "AttrEntry", True),
    },
    "AttrEntry": {"key": (1, "string", False), "value": (2, "AttrValue", False)},
    "AttrValue": {"list": (1, "ListValue", False), "func": (10, "NameAttrList", False)},
    "ListValue": {"func": (9, "NameAttrList", True)},
    "NameAttrList": {"name": (1, "string", False), "attr": (2, "AttrEntry", True)},
    "SavedObjectGraph": {"nodes": (1, "SavedObject", True)},
    "SavedObject": {
        "children": (1, "ObjectReference", True),
        "dependencies": (15, "ObjectReference", True),
        "user_object": (4, "SavedUserObject", False),
        "asset": (5, "bytes", False),
        "function": (6, "SavedFunction", False),
        "variable": (7, "bytes", False),
        "bare_concrete_function": (8, "SavedBareConcreteFunction", False),
        "constant": (9, "bytes", False),
        "resource": (10, "SavedResource", False),
        "saveable_objects": (11, "SaveableEntry", True),
        "captured_tensor": (12, "SavedCapturedTensor", False),
        "registered_name": (13, "string", False),
    },
    "ObjectReference": {"node_id": (1, "int32", False), "local_name": (2, "string", False)},
    "SavedUserObject": {"identifier": (1, "string", False)},
    "SavedFunction": {"concrete_functions": (1, "string", True)},
    "SavedBareConcreteFunction": {"concrete_function_name": (1, "string", False)},
    "SavedResource": {"device": (1, "string", False)},
    "SaveableEntry": {"key": (1, "string", False), "value": (2, "SaveableObject", False)},
    "SaveableObject": {
        "save_function": (2, "int32", False),
        "restore_function": (3, "int32", False),
    },
    "SavedCapturedTensor": {"concrete_function": (2, "string", False)},
}
# An object's kind is a oneof: of several kinds in the file, the last one is the
# object's, for TensorFlow and for the scan alike, so every kind is declared here
# (those the scan does not read as bytes).
_SAVED_OBJECT_KINDS = frozenset(
    {
        "user_object",
        "asset",
        "function",
        "variable",
        "bare_concrete_function",
        "constant",
        "resource",
        "captured_tensor",
    }
)
_PROTO_PACKAGE = "sibyl.savedmodel_scan"


def _saved_model_class():
    """The message class of a SavedModel reduced to _PROTO_FIELDS, in a private pool."""
    scalar = {
        "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        "int32": descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
        "bytes": descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
    }
    file = descriptor_pb2.FileDescriptorProto(
        name="sibyl_savedmodel_scan.proto", package=_PROTO_PACKAGE, syntax="proto3"
    )
    for message_name, fields in _PROTO_FIELDS.items():
        message = file.message_type.add(name=message_name)
        if message_name == "SavedObject":
            message.oneof_decl.add(name="kind")
        for field_name, (number, kind, repeated) in fields.items():
            field = message.field.add(
                name=field_name,
                number=number,
                label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
                if repeated
                else descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
            )
            if message_name == "SavedObject" and field_name in _SAVED_OBJECT_KINDS:
                field.oneof_index = 0
            if kind in scalar:
                field.type = scalar[kind]
            else:
                field.type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
                field.type_name = f".{_PROTO_PACKAGE}.{kind}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"{_PROTO_PACKAGE}.SavedModel")
    )


SavedModelProto = _saved_model_class()
SERVING_SIGNATURE = "serving_default"

# Operations of inference graphs: arithmetic, neural-network kernels, shapes and
# indexing, control flow, function calls, the model's own variables and in-memory
# tables, random numbers. Nothing that reads or writes files, reads datasets,
# calls Python, starts processes, talks to the network, prints to a stream, or
# decodes file formats. Gathered from TensorFlow's op registry (math_ops, nn_ops,
# array_ops, control_flow_ops, functional_ops, resource_variable_ops, list_ops,
# lookup_ops, random_ops) for the ops Keras layers and tf.Module models emit.
_INFERENCE_OPS = """
    Abs Acos Acosh Add AddN AddV2 All Any ApproximateEqual ArgMax ArgMin Asin Asinh Atan
    Atan2 Atanh BatchMatMul BatchMatMulV2 BatchMatMulV3 Betainc BiasAdd BiasAddV1
    BitwiseAnd BitwiseOr BitwiseXor Bucketize Cast Ceil ClipByValue Complex ComplexAbs
    Conj Cos Cosh Cross Cumprod Cumsum CumulativeLogsumexp Digamma Div DivNoNan Equal Erf
    Erfc Erfinv Exp Expm1 Floor FloorDiv FloorMod Greater GreaterEqual Igamma Igammac
    Imag Inv Invert IsFinite IsInf IsNan LeftShift Less LessEqual Lgamma LinSpace Log
    Log1p LogicalAnd LogicalNot LogicalOr MatMul Max Maximum Mean Min Minimum Mod Mul
    MulNoNan Ndtri Neg NextAfter NotEqual PopulationCount Pow Prod Range Real RealDiv
    Reciprocal RightShift Rint Round Rsqrt Select SelectV2 Sigmoid Sign Sin Sinh
    Softplus Sqrt Square SquaredDifference Sub Sum Tan Tanh TruncateDiv TruncateMod
    Xdivy Xlog1py Xlogy Zeta Einsum SegmentMax SegmentMean SegmentMin SegmentProd
    SegmentSum UnsortedSegmentMax UnsortedSegmentMin UnsortedSegmentProd
    UnsortedSegmentSum SparseSegmentMean SparseSegmentSqrtN SparseSegmentSum
    AvgPool AvgPool3D Conv Conv2D Conv2DBackpropInput Conv3D Conv3DBackpropInputV2
    DepthwiseConv2dNative Dilation2D Elu FusedBatchNorm FusedBatchNormV2
    FusedBatchNormV3 FusedPadConv2D FusedResizeAndPadConv2D InTopKV2 L2Loss LRN
    LeakyRelu LogSoftmax MaxPool MaxPool3D MaxPoolV2 MaxPoolWithArgmax Relu Relu6 Selu
    Softmax Softsign TopKV2 ResizeArea ResizeBicubic ResizeBilinear
    ResizeNearestNeighbor ScaleAndTranslate CropAndResize AdjustContrastv2
    AdjustHue AdjustSaturation RGBToHSV HSVToRGB
    BatchToSpaceND Bitcast BroadcastArgs BroadcastGradientArgs BroadcastTo CheckNumerics
    CheckNumericsV2 Concat ConcatOffset ConcatV2 Const DepthToSpace Diag DiagPart
    EditDistance EnsureShape ExpandDims ExtractImagePatches Fill Gather GatherNd
    GatherV2 Identity IdentityN InvertPermutation ListDiff MatrixBandPart MatrixDiag
    MatrixDiagPart MatrixDiagPartV2 MatrixDiagPartV3 MatrixDiagV2 MatrixDiagV3
    MatrixSetDiag MatrixSetDiagV2 MatrixSetDiagV3 MirrorPad OneHot OnesLike Pack Pad
    PadV2 Placeholder PlaceholderWithDefault PreventGradient Rank Reshape ResourceGather
    ResourceGatherNd Reverse ReverseSequence ReverseV2 Roll ScatterNd Shape ShapeN Size
    Slice Snapshot SpaceToBatchND SpaceToDepth Split SplitV Squeeze StopGradient
    StridedSlice StridedSliceGrad TensorScatterAdd TensorScatterMax TensorScatterMin
    TensorScatterSub TensorScatterUpdate Tile Transpose Unique UniqueV2 Unpack
    UnravelIndex Where ZerosLike
    Cholesky MatrixDeterminant MatrixInverse MatrixSolve MatrixTriangularSolve Qr
    SelfAdjointEigV2 Svd LogMatrixDeterminant Lu
    Assert Case If NoOp PartitionedCall StatefulPartitionedCall StatelessCase StatelessIf
    StatelessWhile While Enter Exit LoopCond Merge NextIteration Switch
    AssignAddVariableOp AssignSubVariableOp AssignVariableOp DisableCopyOnRead
    ReadVariableOp VarIsInitializedOp VariableShape
    EmptyTensorList TensorListConcatLists TensorListElementShape TensorListFromTensor
    TensorListGather TensorListGetItem TensorListLength TensorListPopBack
    TensorListPushBack TensorListReserve TensorListResize TensorListScatterIntoExistingList
    TensorListSetItem TensorListSplit TensorListStack TensorArrayCloseV3
    TensorArrayConcatV3 TensorArrayGatherV3 TensorArrayReadV3 TensorArrayScatterV3
    TensorArraySizeV3 TensorArraySplitV3 TensorArrayV3 TensorArrayWriteV3
    AnonymousHashTable AnonymousMutableHashTable AnonymousMutableDenseHashTable
    HashTableV2 LookupTableExportV2 LookupTableFindV2 LookupTableImportV2
    LookupTableInsertV2 LookupTableRemoveV2 LookupTableSizeV2 MutableDenseHashTableV2
    MutableHashTableOfTensorsV2 MutableHashTableV2
    AsString StringJoin StringLength StringLower StringStrip StringToHashBucketFast
    StringUpper Substr StaticRegexFullMatch StaticRegexReplace StringSplitV2
    RaggedTensorToTensor RaggedTensorFromVariant RaggedTensorToVariant
    RandomStandardNormal RandomUniform RandomUniformInt TruncatedNormal
    StatelessRandomGetKeyCounter StatelessRandomNormal StatelessRandomNormalV2
    StatelessRandomUniform StatelessRandomUniformFullInt StatelessRandomUniformFullIntV2
    StatelessRandomUniformInt StatelessRandomUniformIntV2 StatelessRandomUniformV2
    StatelessTruncatedNormal StatelessTruncatedNormalV2
"""
ALLOWED_OPS = frozenset(_INFERENCE_OPS.split())


def check_savedmodel_graph(saved_model_pb: bytes) -> None:
    """Refuse a SavedModel whose serving, or whose loading, runs an operation not allowed."""
    refused = {
        op: functions
        for op, functions in savedmodel_ops(saved_model_pb).items()
        if op not in ALLOWED_OPS
    }
    if refused:
        named = ", ".join(
            f"{op} (in {sorted(functions)[0]})" for op, functions in sorted(refused.items())[:8]
        )
        raise ModelFileError(
            f"the SavedModel's serving_default signature (or its loading) runs operations "
            f"Sibyl does not allow: {named}. Only inference operations are accepted: "
            "no file, dataset, Python, process or network operations"
        )


def savedmodel_ops(saved_model_pb: bytes) -> dict[str, set[str]]:
    """The operation types serving or loading the SavedModel can run: {op: {function, ...}}.

    Only what is reachable counts, not every op of the file: every SavedModel that
    tf.saved_model.save or Keras' export() writes holds the checkpoint functions
    (SaveV2, RestoreV2, MergeV2Checkpoints, ShardedFilename), which
    tf.saved_model.load never calls. What the loader could read differently from
    this scan is refused instead (see _functions_run).
    """
    saved_model = SavedModelProto()
    try:
        saved_model.ParseFromString(saved_model_pb)
    except (DecodeError, RecursionError):
        raise ModelFileError(
            "saved_model.pb is not a SavedModel protocol buffer, or is nested too deeply"
        ) from None
    if len(saved_model.meta_graphs) != 1 or not saved_model.meta_graphs[0].HasField(
        "object_graph_def"
    ):
        raise ModelFileError(
            "a TensorFlow 1 SavedModel (without an object graph) is not accepted: "
            "save the model with tf.saved_model.save or Keras' model.export()"
        )
    meta_graph = saved_model.meta_graphs[0]
    functions = meta_graph.graph_def.library.function
    twice = _named_twice(function.signature.name for function in functions)
    if twice is not None:
        raise ModelFileError(f"the SavedModel defines the function {twice} twice")
    library = {function.signature.name: function for function in functions}
    roots = _functions_run(meta_graph.object_graph_def)
    missing = sorted(roots - library.keys())
    if missing:
        raise ModelFileError(f"the SavedModel names functions it does not hold: {missing[:3]}")

    ops: dict[str, set[str]] = {}
    seen: set[str] = set()
    pending = sorted(roots)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in library[name].node_def:
            if node.op in library:  # a function called by name
                pending.append(node.op)
            else:
                ops.setdefault(node.op, set()).add(name)
            for attr in node.attr:
                for called in _functions_named(attr.value, 0):
                    if called not in library:
                        raise ModelFileError(
                            f"{name} calls a function the SavedModel does not hold ({called})"
                        )
                    pending.append(called)
    return ops


# The classes a SavedModel's object may name as its `registered_name`: those
# TensorFlow registers for tf.saved_model (a test checks them). The loader builds
# such an object with the class's own code; a StaticHashTable becomes a resource.
REGISTERED_CLASSES = frozenset({"tf.StaticHashTable", "tf.TrackableConstant"})


def _functions_run(object_graph) -> set[str]:
    """Functions run by serving `serving_default` and by tf.saved_model.load itself.

    The object graph is read as TensorFlow's loader reads it, and what it could read
    otherwise is refused: a name twice under one object (the loader keeps the last
    child of a name; `serving_default` twice once ran a second, unscanned function),
    a class the loader would build with code of its own, and a root `signatures`
    other than the graph's one signature map (another object, looked up, could run
    a function of its own). Names are compared as they are: the loader looks
    signatures up by exact name and normalises none on this path.

    Loading calls the functions of resources, and of registered classes that become
    resources: their creators (a child or a dependency), initialisers and
    destructors; and the restore functions of saveable objects (their save
    functions are counted too). The checkpoint functions of the graph (SaveV2,
    RestoreV2) are called by neither, nor are other methods.
    """
    nodes = object_graph.nodes
    if not nodes:
        raise ModelFileError("the SavedModel's object graph is empty")

    def node(node_id: int):
        if not 0 <= node_id < len(nodes):
            raise ModelFileError("the SavedModel's object graph is malformed")
        return nodes[node_id]

    def child(parent, local_name: str):
        return next((ref.node_id for ref in parent.children if ref.local_name == local_name), None)

    def functions_of(saved) -> set[str]:
        names = set(saved.function.concrete_functions)
        if saved.HasField("bare_concrete_function"):
            names.add(saved.bare_concrete_function.concrete_function_name)
        return names

    for saved in nodes:
        for references in (saved.children, saved.dependencies):
            twice = _named_twice(ref.local_name for ref in references)
            if twice is not None:
                raise ModelFileError(
                    f"the SavedModel's object graph names {twice[:100]!r} twice under one "
                    "object: TensorFlow would use only the last; save the model again"
                )
        if saved.registered_name and saved.registered_name not in REGISTERED_CLASSES:
            raise ModelFileError(
                f"the SavedModel has an object of class {saved.registered_name[:100]!r}, "
                "which Sibyl does not accept"
            )

    signature_maps = [
        node_id
        for node_id, saved in enumerate(nodes)
        if saved.HasField("user_object") and saved.user_object.identifier == "signature_map"
    ]
    signatures = child(node(0), "signatures")
    serving = None if signatures is None else child(node(signatures), SERVING_SIGNATURE)
    roots = set() if serving is None else functions_of(node(serving))
    if not roots:
        raise ModelFileError(f"the SavedModel has no {SERVING_SIGNATURE!r} signature")
    if signature_maps != [signatures]:
        raise ModelFileError(
            "the SavedModel's signatures must be one signature map, the root object's "
            "`signatures`: save the model with tf.saved_model.save or Keras' model.export()"
        )
    for saved in nodes:
        if saved.HasField("resource") or saved.registered_name:
            for ref in [*saved.children, *saved.dependencies]:
                roots |= functions_of(node(ref.node_id))
        for saveable in saved.saveable_objects:
            roots |= functions_of(node(saveable.value.save_function))
            roots |= functions_of(node(saveable.value.restore_function))
        if saved.HasField("captured_tensor"):
            roots.add(saved.captured_tensor.concrete_function)
    return roots


def _named_twice(names: Iterable[str]) -> str | None:
    """The first name that occurs a second time, or None."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


def _functions_named(value, depth: int) -> Iterator[str]:
    """Function names in an attribute: `f`, `body`, `then_branch`, `branches`, ..."""
    if depth > 16:
        raise ModelFileError("the SavedModel's function attributes are nested too deep")
    funcs = [value.func] if value.HasField("func") else []
    funcs += list(value.list.func)
    for func in funcs:
        yield func.name
        for attr in func.attr:
            yield from _functions_named(attr.value, depth + 1)


# --- refusals, as a client reads them ----------------------------------------------------

# Failures whose own words are Python's, protobuf's or TensorFlow's (and often quote
# a path of the server), in words the uploader can act on.
KNOWN_FAILURES = (
    (re.compile(r"MaxDepth"), "saved_model.pb is nested too deeply"),  # protobuf's limit
    (
        re.compile(r"maximum recursion depth"),
        "the model is nested too deeply to be loaded (layers, structures or functions "
        "nested in one another)",
    ),
    (re.compile(r"File name too long|Errno 36\b"), "a file name in the archive is too long"),
)
WITHHELD = (
    "the model could not be loaded, for a reason the server logged but does not show: "
    "check that it loads with keras.saving.load_model(path, safe_mode=True) or "
    "tf.saved_model.load(path)"
)
ROOT = Path(__file__).resolve().parents[2]  # where the `service` package lives
SERVER_PLACES = (tempfile.gettempdir(), "/tmp/", str(ROOT), sys.prefix, sys.base_prefix)


def in_client_words(message: str, raw: bool = False) -> str:
    """A refusal as a 422 may say it: a known failure in the uploader's words, never a
    path of the server; a raw exception's text (raw) only as a known failure."""
    for pattern, words in KNOWN_FAILURES:
        if pattern.search(message):
            return words
    if raw or any(place in message for place in SERVER_PLACES):
        log.warning("a refusal withheld from the client: %s", message)
        return WITHHELD
    return message


def refusals_in_client_words(inspect: Callable[..., dict]) -> Callable[..., dict]:
    """Every failure of `inspect` as a ModelFileError in a client's words: Eve answers
    any other exception's raw text in the 422, and raw texts quote server paths."""

    @functools.wraps(inspect)
    def inspected(*args, **kwargs) -> dict:
        try:
            return inspect(*args, **kwargs)
        except ModelFileError as error:
            raise ModelFileError(in_client_words(str(error))) from None
        except Exception as error:
            log.exception("checking an uploaded model failed")
            raise ModelFileError(in_client_words(str(error), raw=True)) from None

    return inspected
