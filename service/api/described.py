"""`described`: a view's OpenAPI operation, written next to the view
(service/api/openapi.py collects them into the document)."""

OPERATION = "openapi"  # the attribute `described` sets on a view


def described(**operation):
    """Attach the view's OpenAPI operation (summary, parameters, requestBody, responses,
    as in the document; or one per method: described(GET={...}, POST={...})). Laid over
    what the document generates for an Eve endpoint; error responses are added."""

    def attach(view):
        setattr(view, OPERATION, operation)
        return view

    return attach


def json_body(schema: dict, description: str = "") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}
