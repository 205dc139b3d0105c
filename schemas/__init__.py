"""The Eve DOMAIN, gathered from one module per resource."""

from schemas.jobs import JOBS
from schemas.models import MODELS
from schemas.predictions import PREDICTIONS

DOMAIN = {"jobs": JOBS, "models": MODELS, "predictions": PREDICTIONS}
