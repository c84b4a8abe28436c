"""Every NATS subject, stream, consumer and header name, in one place.

Layout (one stream per model, so each model has its own limits, backlog bound and KEDA trigger):

    stream   jetserve-req-<model>           subjects jetserve.req.<model>.priority
                                                     jetserve.req.<model>.online
                                                     jetserve.req.<model>.batch
                                            and, for a tenant's own NATS user,
                                                     jetserve.req.<model>.<priority>.<tenant>
    consumer priority / online / batch      durable pull consumers (one per priority, each
                                            filtering both forms), shared by all replicas,
                                            served in that order
    cancel   jetserve.cancel.<model>.<id>   core NATS, fan-out to the model's workers
    ping     jetserve.ping.<model>          core NATS request; every live worker answers
    dlq      jetserve-dlq                   subjects jetserve.dlq.<model>
    results  jetserve-results               subjects jetserve.results.>  (durable replies)
                                            consumer scheduler (the scheduler's result collector)
    events   jetserve-response-events       subjects jetserve.revents.<request id> (a background
                                            response's chunks and result, kept for replay)
                                            consumer scheduler (stores the results)
    async    jetserve-async                 subject  jetserve.async.submit[.<tenant>] (async
                                            requests over NATS; the scheduler records, then
                                            dispatches them)
    idem     jetserve-idempotent-results    KV bucket: replies to requests with an idempotency key
             jetserve.reply.idem.<token>    their shared reply subject
    limits   jetserve-ratelimits            KV bucket: tenants' rate buckets, shared by every
                                            bridge replica (key <tenant>.<scope>.<dimension>)

Model names and request ids become subject tokens, so both are restricted to
`[A-Za-z0-9_-]`: nothing a user sends can become a wildcard (`*`, `>`), a token separator
(`.`) or whitespace. A reply subject (`Jetserve-Reply-To`) is chosen by the publisher and
published to by the worker, with the worker's permissions: `validate_reply_subject` keeps it
a literal subject outside the system (`$...`) and jetserve's own request/control subjects.
"""

from __future__ import annotations

import re
from enum import StrEnum

ROOT = "jetserve"
STREAM_PREFIX = f"{ROOT}-req-"

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
REQUEST_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
_MODEL_NAME_RE = re.compile(MODEL_NAME_PATTERN)
_REQUEST_ID_RE = re.compile(REQUEST_ID_PATTERN)


class InvalidName(ValueError):
    """A model name or request id that cannot be used as a NATS subject token."""


class Priority(StrEnum):
    """A model's queues, in the order workers serve them (each is a subject token and the
    name of its consumer). OpenAI's `service_tier` maps onto them (schemas/tiers.py)."""

    #: `service_tier: priority`: served before everything else, at every queue.
    PRIORITY = "priority"
    #: Interactive traffic (`service_tier: default`).
    ONLINE = "online"
    #: Batch items and `service_tier: flex`: fill capacity that online traffic leaves free.
    BATCH = "batch"


class Header(StrEnum):
    """NATS message headers jetserve reads or writes."""

    #: JetStream de-duplication key (the request id, or the tenant-scoped idempotency key).
    MSG_ID = "Nats-Msg-Id"
    #: Subject where the worker publishes chunks and the final or error result.
    REPLY_TO = "Jetserve-Reply-To"
    #: Body encoding of the request, and of every reply to it: `json` (default) or `msgpack`.
    ENCODING = "Jetserve-Encoding"
    #: On dead-lettered messages: why, and after how many deliveries.
    ERROR_CODE = "Jetserve-Error-Code"
    ERROR_MESSAGE = "Jetserve-Error-Message"
    DELIVERIES = "Jetserve-Deliveries"
    ORIGINAL_SUBJECT = "Jetserve-Original-Subject"


#: NATS's own headers and subjects (the server's and JetStream's API), spelled once.
#: A status-only message (no body: a 503 "no responders", a pull request's 408/409 end).
STATUS_HEADER = "Status"
NO_RESPONDERS_STATUS = "503"
JS_API = "$JS.API"
#: Paged list of stream names, filtered by subject.
JS_STREAM_NAMES = f"{JS_API}.STREAM.NAMES"
#: The prefix of a JetStream message's ack (reply) subject.
JS_ACK_PREFIX = "$JS.ACK."


def pull_subject(stream: str, consumer: str) -> str:
    """A pull request for `consumer`'s next messages."""
    return f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.{consumer}"


#: HTTP request headers the bridge and the batch API read (lower case, as ASGI gives them).
HTTP_AUTHORIZATION = "authorization"
HTTP_IDEMPOTENCY_KEY = "idempotency-key"
#: The client's own deadline for the request, in seconds.
HTTP_TIMEOUT = "x-jetserve-timeout-s"
#: Async requests: the webhook endpoint to notify when the result is stored.
HTTP_CALLBACK_URL = "x-jetserve-callback-url"
#: A sticky routing key for served names with several versions (schemas/routes.py): requests
#: with the same key see the same version while the weights do not change.
HTTP_ROUTE_KEY = "x-jetserve-route-key"
#: Request metadata key: a batch line's sticky routing key (its body's `prompt_cache_key`,
#: `safety_identifier` or `user`), kept from validation to dispatch, where a served name's
#: version is chosen.
ROUTE_KEY_METADATA = "route_key"

#: Inbox prefixes of jetserve's shared-inbox subscriptions (a random token follows each).
INBOX_ROOT = "_INBOX"
#: A producer client's inbox: replies on `<inbox>.<id>`, PubAcks on `<inbox>.<n>.ack`.
CLIENT_INBOX = f"{INBOX_ROOT}.{ROOT}"
#: A worker's PubAcks of durable replies.
RESULTS_INBOX = f"{INBOX_ROOT}.{ROOT}-results"
#: The scheduler's PubAcks of batch items and async requests.
SCHEDULER_INBOX = f"{INBOX_ROOT}.{ROOT}-scheduler"


class Encoding(StrEnum):
    JSON = "json"
    MSGPACK = "msgpack"


def validate_model_name(name: str) -> str:
    """Return `name` if it is a valid model name, else raise `InvalidName`."""
    if not isinstance(name, str) or not _MODEL_NAME_RE.fullmatch(name):
        raise InvalidName(
            f"invalid model name {name!r}: use 1-64 of A-Z a-z 0-9 _ - (starting alphanumeric)"
        )
    return name


def validate_request_id(request_id: str) -> str:
    if not isinstance(request_id, str) or not _REQUEST_ID_RE.fullmatch(request_id):
        raise InvalidName(f"invalid request id {request_id!r}: use 1-128 of A-Z a-z 0-9 _ -")
    return request_id


#: Visible ASCII, no wildcard characters; tokens are checked apart.
_REPLY_SUBJECT_RE = re.compile(r"^[!-)+-=?-~]{1,256}$")


def validate_reply_subject(subject: str) -> str:
    """Return `subject` if a worker may publish replies there, else raise `InvalidName`.

    A literal subject of 1-256 visible ASCII characters, no empty token, no wildcard, not
    under `$` (the JetStream/KV/system APIs), and, inside `jetserve.`, only the durable
    result and idempotent reply subjects (never a request, cancel, ping or dead-letter
    subject of some model)."""
    if not isinstance(subject, str) or not _REPLY_SUBJECT_RE.fullmatch(subject):
        raise InvalidName(
            f"invalid reply subject {subject!r}: use 1-256 visible ASCII characters, "
            "no `*`, `>` or whitespace"
        )
    if ".." in subject or subject[0] in ".$" or subject[-1] == ".":
        raise InvalidName(f"invalid reply subject {subject!r}: empty token or `$` subject")
    if subject.startswith(_ROOT_DOT) and not subject.startswith(_REPLY_PREFIXES):
        raise InvalidName(f"invalid reply subject {subject!r}: reserved for jetserve")
    return subject


def stream_name(model: str) -> str:
    return f"{STREAM_PREFIX}{validate_model_name(model)}"


def consumer_name(priority: Priority) -> str:
    """Durable consumer of a model's stream; the same name in every model's stream."""
    return str(Priority(priority))


def request_subject(model: str, priority: Priority = Priority.ONLINE) -> str:
    return f"{ROOT}.req.{validate_model_name(model)}.{Priority(priority)}"


def tenant_request_subject(model: str, tenant: str, priority: Priority = Priority.ONLINE) -> str:
    """Where a tenant's own NATS user publishes its requests: the tenant is the rest of the
    subject (a tenant name may hold `.`), so the NATS account's permissions, not the body,
    say whose request it is (`k8s/nats/accounts.conf`)."""
    return f"{request_subject(model, priority)}.{validate_tenant(tenant)}"


def request_filters(model: str, priority: Priority) -> list[str]:
    """The subjects of one of a model's queues: the service's, and every tenant's."""
    subject = request_subject(model, priority)
    return [subject, f"{subject}.>"]


def request_subjects(model: str) -> list[str]:
    return [s for p in Priority for s in request_filters(model, p)]


def model_from_request_subject(subject: str) -> str:
    """The model token of a request subject (`jetserve.req.<model>.<priority>[.<tenant>]`)."""
    parts = subject.split(".", 4)
    if len(parts) < 4 or parts[0] != ROOT or parts[1] != "req":
        raise InvalidName(f"not a request subject: {subject!r}")
    return validate_model_name(parts[2])


def tenant_async_submit_subject(tenant: str) -> str:
    return f"{ASYNC_SUBMIT_SUBJECT}.{validate_tenant(tenant)}"


def tenant_of_async_subject(subject: str) -> str | None:
    """The tenant of `jetserve.async.submit.<tenant>`; None for the service's own subject."""
    prefix = ASYNC_SUBMIT_SUBJECT + "."
    return subject[len(prefix) :] if subject.startswith(prefix) else None


def tenant_of_request_subject(subject: str) -> str | None:
    """The tenant of `jetserve.req.<model>.<priority>.<tenant>`; None for the service's own
    subjects (`jetserve.req.<model>.<priority>`), whose publishers are trusted."""
    parts = subject.split(".", 4)
    return parts[4] if len(parts) == 5 else None


#: A tenant name, as API keys are issued to (`scheduler/store/keys.py`); in a subject, its
#: tokens.
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_TENANT_RE = re.compile(TENANT_PATTERN)


def validate_tenant(tenant: str) -> str:
    if not isinstance(tenant, str) or not _TENANT_RE.fullmatch(tenant):
        raise InvalidName(f"invalid tenant {tenant!r}: use 1-128 of A-Z a-z 0-9 _ . -")
    if ".." in tenant or tenant.endswith("."):
        raise InvalidName(f"invalid tenant {tenant!r}: an empty subject token")
    return tenant


def cancel_subject(model: str, request_id: str) -> str:
    return f"{ROOT}.cancel.{validate_model_name(model)}.{validate_request_id(request_id)}"


def cancel_subscription(model: str) -> str:
    return f"{ROOT}.cancel.{validate_model_name(model)}.*"


def ping_subject(model: str) -> str:
    return f"{ROOT}.ping.{validate_model_name(model)}"


DLQ_STREAM = f"{ROOT}-dlq"
DLQ_SUBJECTS = f"{ROOT}.dlq.>"


def dlq_subject(model: str) -> str:
    return f"{ROOT}.dlq.{validate_model_name(model)}"


RESULTS_STREAM = f"{ROOT}-results"
RESULTS_PREFIX = f"{ROOT}.results"
RESULTS_SUBJECTS = f"{RESULTS_PREFIX}.>"


def results_subject(kind: str, owner_id: str) -> str:
    """A durable reply subject: results published here are stored in the results stream."""
    return f"{RESULTS_PREFIX}.{validate_request_id(kind)}.{validate_request_id(owner_id)}"


class ResultKind(StrEnum):
    """The `<kind>` token of a durable reply subject: who owns the result."""

    #: A batch item: `jetserve.results.batch.<batch id>`.
    BATCH = "batch"
    #: An async single request: `jetserve.results.async.<request id>`.
    ASYNC = "async"


#: The scheduler's durable pull consumer of the results stream.
RESULTS_CONSUMER = "scheduler"
#: Metadata key of the scheduler's consumers: the installation (its database's id) whose
#: scheduler they feed. Another installation's scheduler on the same NATS server refuses
#: them, rather than take results it has no record of and ack them away.
CONSUMER_OWNER_METADATA = "jetserve-installation"


def owner_from_results_subject(subject: str) -> tuple[str, str] | None:
    """(kind, owner id) of `jetserve.results.<kind>.<owner id>`; None for anything else."""
    parts = subject.split(".")
    if len(parts) != 4 or f"{parts[0]}.{parts[1]}" != RESULTS_PREFIX:
        return None
    return parts[2], parts[3]


#: Async single requests over NATS: publish the `InferenceRequest` (JetStream, `Nats-Msg-Id` =
#: its id) here; the scheduler records it, dispatches it, and keeps its result for polling.
#: A `callback_url` in its metadata (a webhook endpoint the tenant registered) gets the
#: `request.completed` / `request.failed` event.
ASYNC_STREAM = f"{ROOT}-async"
ASYNC_SUBMIT_SUBJECT = f"{ROOT}.async.submit"
#: Both: the service's subject and every tenant's (`jetserve.async.submit.<tenant>`, where a
#: tenant's own NATS user submits: the scheduler takes the tenant from the subject).
ASYNC_SUBMIT_SUBJECTS = [ASYNC_SUBMIT_SUBJECT, f"{ASYNC_SUBMIT_SUBJECT}.>"]
ASYNC_CONSUMER = "scheduler"
CALLBACK_URL_METADATA = "callback_url"
#: The endpoint background responses are recorded under among the async requests, and the
#: prefix of a response id (`resp_` + its request's id), which the scheduler's webhooks name.
RESPONSES_ENDPOINT = "/v1/responses"
RESPONSE_ID_PREFIX = "resp_"


#: A background response's event log: its request's reply subject, where the worker publishes
#: every chunk and the result (each JetStream-acknowledged), kept (limits retention, max_age)
#: so that any bridge can replay the response's stream from its first event; the scheduler's
#: consumer stores the results, as for `jetserve.results.>`.
EVENTS_STREAM = f"{ROOT}-response-events"
EVENTS_PREFIX = f"{ROOT}.revents"
EVENTS_SUBJECTS = f"{EVENTS_PREFIX}.>"
EVENTS_CONSUMER = "scheduler"


def response_events_subject(request_id: str) -> str:
    return f"{EVENTS_PREFIX}.{validate_request_id(request_id)}"


def request_of_events_subject(subject: str) -> str | None:
    """The request id of `jetserve.revents.<request id>`; None for anything else."""
    prefix = EVENTS_PREFIX + "."
    if not subject.startswith(prefix):
        return None
    request_id = subject[len(prefix) :]
    return request_id if _REQUEST_ID_RE.fullmatch(request_id) else None


def async_reply_subject(request_id: str, *, events: bool) -> str:
    """Where an async request's worker replies: its event log when it is streamed (a
    background response), else its durable result subject."""
    if events:
        return response_events_subject(request_id)
    return results_subject(ResultKind.ASYNC, request_id)


def is_durable_reply(subject: str) -> bool:
    """Replies on these subjects must be published with a JetStream acknowledgement."""
    return subject.startswith((RESULTS_PREFIX + ".", EVENTS_PREFIX + "."))


def result_msg_id(request_id: str) -> str:
    """The `Nats-Msg-Id` of a request's durable result: one result per request is stored
    (within the stream's duplicate window), whoever publishes it first (a redelivered
    request's worker, or a bridge cancelling it)."""
    return f"result-{request_id}"


def keeps_chunks(subject: str) -> bool:
    """Durable replies carry only the result, except in an event log (chunks too)."""
    return subject.startswith(EVENTS_PREFIX + ".")


def model_from_stream_name(stream: str) -> str | None:
    """The model of a request stream (`jetserve-req-<model>`); None for any other stream."""
    if not stream.startswith(STREAM_PREFIX):
        return None
    model = stream[len(STREAM_PREFIX) :]
    return model if _MODEL_NAME_RE.fullmatch(model) else None


#: NATS KV bucket of the terminal replies of requests sent with an idempotency key, kept for
#: the duplicate window: a retried POST gets the stored answer instead of running again.
IDEMPOTENCY_BUCKET = f"{ROOT}-idempotent-results"
IDEMPOTENT_REPLY_PREFIX = f"{ROOT}.reply.idem"
#: What `validate_reply_subject` allows inside `jetserve.` (checked per request).
_ROOT_DOT = f"{ROOT}."
_REPLY_PREFIXES = (f"{RESULTS_PREFIX}.", f"{IDEMPOTENT_REPLY_PREFIX}.", f"{EVENTS_PREFIX}.")


def idempotent_reply_subject(token: str) -> str:
    """Where replies to an idempotent request go: derived from (tenant, key) only, so a
    retry (on any bridge replica) listens where the first attempt's result will arrive."""
    return f"{IDEMPOTENT_REPLY_PREFIX}.{validate_request_id(token)}"


#: NATS KV bucket of routes (`routes.Route`, JSON): key = the served name. Every producer
#: watches it; its history (`ROUTES_HISTORY` values a key) is what `jetserve routes rollback`
#: goes back through.
ROUTES_BUCKET = f"{ROOT}-routes"
ROUTES_HISTORY = 16

#: NATS KV bucket of delivery records (`messages.DeliveryRecord`): per request message (key
#: `<stream>.<stream sequence>`), its deliveries that do not count as attempts (handed back
#: unrun by a draining worker, or ended by a crash while it was not running alone) and its
#: quarantine group. The dead-letter decision counts deliveries minus these
#: (workers/handbacks.py).
HANDBACK_BUCKET = f"{ROOT}-handbacks"


#: JetStream Object Store bucket of images too large to ride inside their request (a request
#: carries the object's name, the sha256 of its bytes). Objects expire with the bucket's
#: time-to-live, not when their request ends: a redelivery or a dead-letter replay needs them.
IMAGES_BUCKET = f"{ROOT}-images"
IMAGES_TTL_S = 24 * 3600.0
#: An `image_url.url` naming an object of `IMAGES_BUCKET` instead of carrying the image:
#: this prefix, then the sha256 of the bytes in hex (`jetserve-image:9f86d0...`).
IMAGE_REF_PREFIX = "jetserve-image:"

#: NATS KV bucket of the tenants' token buckets (`limits.BucketState`), one key per tenant,
#: scope and dimension (`ratelimit_key`), updated compare-and-set by every bridge replica.
RATELIMIT_BUCKET = f"{ROOT}-ratelimits"
#: The scope token of a limit that applies to every model (`=` is in no model name).
_ALL_MODELS_SCOPE = "=all"


def ratelimit_key(tenant: str, model: str | None, dimension: str) -> str:
    """The KV key of `tenant`'s bucket for `dimension` (`requests`, `tokens`), for `model`,
    or for all its models when `model` is None. Tenants are `[A-Za-z0-9_.-]` (keys.py) and
    models `[A-Za-z0-9_-]`: both are valid KV key characters."""
    return f"{tenant}.{_ALL_MODELS_SCOPE if model is None else model}.{dimension}"
