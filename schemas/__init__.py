"""The Eve DOMAIN, gathered from one module per resource.

A resource's entry is all there is to it (docs/EXTENDING.md): besides Eve's keys
(schema, methods, allowed_filters, mongo_indexes), Sibyl reads `access` (owned or
shared), `roles` (who may read and write), `description`, `internal_fields` and
`changeable_fields`; the data layer's ownership, the rights table, OpenAPI and the
browsable pages' navigation and forms are derived from them.
"""

from schemas.jobs import JOBS
from schemas.models import MODELS
from schemas.predictions import PREDICTIONS

# In this order on the browsable pages' navigation bar.
DOMAIN = {"jobs": JOBS, "predictions": PREDICTIONS, "models": MODELS}
