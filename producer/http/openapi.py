"""`/openapi.json`: Litestar's document, with the schemas of the raw-body routes filled in."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar

from producer.http import openai_types as oa
from producer.http.errors import ErrorEnvelope

JSON = "application/json"

#: (path, request struct, response struct) documented in /openapi.json.
_DOCUMENTED = (
    ("/v1/chat/completions", oa.ChatCompletionRequest, oa.ChatCompletion),
    ("/v1/completions", oa.CompletionRequest, oa.Completion),
    ("/v1/embeddings", oa.EmbeddingRequest, oa.EmbeddingList),
    ("/v1/models", None, oa.ModelList),
)


def openapi_document(app: Litestar) -> bytes:
    """Litestar's document, with request/response schemas of the raw-body routes filled in
    from the msgspec structs they are decoded with."""
    doc = app.openapi_schema.to_schema()
    structs = [t for _, req, resp in _DOCUMENTED for t in (req, resp) if t is not None]
    (_, components) = msgspec.json.schema_components(
        [*structs, ErrorEnvelope], ref_template="#/components/schemas/{name}"
    )
    doc.setdefault("components", {}).setdefault("schemas", {}).update(components)
    error = {
        "description": "An error in OpenAI's shape",
        "content": {JSON: {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}},
    }
    for path, req, resp in _DOCUMENTED:
        method = "get" if req is None else "post"
        op = doc["paths"][path][method]
        if req is not None:
            ref = {"$ref": f"#/components/schemas/{req.__name__}"}
            op["requestBody"] = {"required": True, "content": {JSON: {"schema": ref}}}
        ok = {"$ref": f"#/components/schemas/{resp.__name__}"}
        content: dict[str, Any] = {JSON: {"schema": ok}}
        if req is not None and path != "/v1/embeddings":
            content["text/event-stream"] = {"schema": {"type": "string"}}
        op["responses"] = {"200": {"description": "OK", "content": content}, "default": error}
        op["security"] = [{"bearer": []}]
    doc["components"].setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
    }
    return msgspec.json.encode(doc)
