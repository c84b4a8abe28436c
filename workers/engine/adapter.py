"""`EngineAdapter`: the engine as a worker backend (the `workers.backend.Backend` protocol).
The engine runs on its own thread; the worker's asyncio loop talks to it through a command
queue one way and `call_soon_threadsafe` the other.

    asyncio (worker)                         engine thread
    run(): tokenize, check, ("add", req) ->  drain commands, step(), step(), ...
           await outputs                 <-  call_soon_threadsafe(dispatch, outputs)
    cancel -> ("abort", id)              ->  finish it at the next step boundary
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from schemas.messages import (
    FinishReason,
    InferenceRequest,
    PromptTokensDetails,
    TokenLogprob,
    TokenLogprobs,
    Usage,
)
from schemas.payloads import ChatPayload, CompletionPayload, TextOutput
from workers.backend import STOP_TIMEOUT_S, BackendStats, ChunkSink, Completion, model_input
from workers.engine import structured
from workers.engine.constraints import Constraint, Grammars
from workers.engine.engine import Engine, Output
from workers.engine.prompts import Prompt, chat_ids, completion_ids
from workers.engine.sampler import TokenChoice
from workers.engine.sequence import FINISH_REASONS, EngineRequest
from workers.engine.vision_prompts import ImageBytes, VisionPrompter
from workers.errors import EngineDeadError, PermanentError
from workers.image_source import ImageStore, fetch_images

log = logging.getLogger(__name__)

_STOP = object()


@dataclass
class _Waiter:
    #: Every step's output is relayed (streams, log-probabilities); otherwise only the last.
    relay_all: bool
    queue: asyncio.Queue[Output | BaseException] = field(default_factory=asyncio.Queue)
    #: Wall time of the first token, set by the engine thread.
    first_token_at: float | None = None


class EngineAdapter:
    kinds = frozenset({"chat", "completion"})

    def __init__(
        self,
        engine: Engine,
        tokenizer: Any,
        eos_token_ids: frozenset[int],
        grammars: Grammars | None = None,
        vision: VisionPrompter | None = None,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.grammars = grammars
        #: A vision-language model's prompts (None: a text model).
        self.vision = vision
        #: Where image references are read (`attach_images`).
        self._images: ImageStore | None = None
        self._commands: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._waiters: dict[str, _Waiter] = {}
        self._capacity = engine.capacity()
        self._stats = BackendStats(0, 0, 0.0)
        self._dead: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run_engine, name="engine", daemon=True)

    # -- Backend protocol --------------------------------------------------------------------

    def capacity(self) -> int:
        return self._capacity

    def metadata(self) -> None:
        return None

    def stats(self) -> BackendStats:
        return self._stats

    def attach_images(self, store: ImageStore) -> None:
        """Read image references (`names.IMAGE_REF_PREFIX`) from `store`."""
        self._images = store

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    async def stop(self) -> None:
        self._commands.put(_STOP)
        await asyncio.to_thread(self._thread.join, STOP_TIMEOUT_S)

    async def run(self, request: InferenceRequest, emit: ChunkSink) -> Completion:
        if self._dead is not None:
            raise EngineDeadError(f"engine died: {self._dead!r}")
        payload = model_input(request).payload
        assert isinstance(payload, ChatPayload | CompletionPayload)
        images: list[ImageBytes] = []
        if self.vision is not None and isinstance(payload, ChatPayload):
            images = await fetch_images(payload, self._images)
        plan, prompt, constraint = await asyncio.to_thread(self.prepare, payload, images)
        engine_request = self.engine_request(request, prompt, constraint)
        params = request.parameters
        waiter = _Waiter(relay_all=request.stream or params.logprobs or params.top_logprobs > 0)
        self._waiters[request.id] = waiter
        self._commands.put(("add", engine_request))
        try:
            return await self._collect(request, plan, waiter, emit)
        except asyncio.CancelledError:
            self._commands.put(("abort", request.id))
            raise
        finally:
            self._waiters.pop(request.id, None)

    def prepare(
        self, payload: ChatPayload | CompletionPayload, images: list[ImageBytes] | None = None
    ) -> tuple[structured.Plan, Prompt, Constraint | None]:
        """Grammar, prompt and constraint (off the event loop: tokenizing, compiling, image
        processing)."""
        template = getattr(self.tokenizer, "chat_template", None)
        if self.vision is not None:
            template = template or getattr(self.vision.processor, "chat_template", None)
        plan = structured.plan(payload, template)
        if isinstance(payload, ChatPayload):
            if self.vision is not None:
                prompt = self.vision.prompt(plan.messages, images or [])
            else:
                prompt = Prompt(chat_ids(self.tokenizer, plan.messages))
        else:
            prompt = Prompt(completion_ids(self.tokenizer, payload.prompt))
        constraint = None
        if plan.grammar is not None:
            if self.grammars is None:
                raise PermanentError(
                    "structured output is not available on this worker (install llguidance)",
                    param=plan.description or None,
                )
            constraint = self.grammars.constraint(plan.grammar, plan.description)
        return plan, prompt, constraint

    # -- wire request -> engine request (the one constructor) --------------------------------

    def engine_request(
        self, request: InferenceRequest, prompt: Prompt, constraint: Constraint | None = None
    ) -> EngineRequest:
        params = request.parameters
        ids = prompt.token_ids
        max_tokens = self.engine.check(len(ids), params.max_tokens)
        deadline = None
        if request.deadline_ms is not None:
            deadline = time.monotonic() + (request.deadline_ms / 1000 - time.time())
        return EngineRequest(
            id=request.id,
            prompt_token_ids=ids,
            params=params,
            max_tokens=max_tokens,
            priority=request.priority,
            deadline=deadline,
            eos_token_ids=self.eos_token_ids,
            constraint=constraint,
            images=prompt.images,
            cache_key=prompt.cache_key,
        )

    async def _collect(
        self, request: InferenceRequest, plan: structured.Plan, waiter: _Waiter, emit: ChunkSink
    ) -> Completion:
        want_logprobs = request.parameters.logprobs or request.parameters.top_logprobs > 0
        logprobs: list[TokenLogprobs] = []
        calls = structured.ToolCallStream() if plan.tool_mode != "none" else None
        while True:
            item = await waiter.queue.get()
            if isinstance(item, BaseException):
                if isinstance(item, PermanentError):
                    raise item
                raise EngineDeadError(f"engine died: {item!r}")
            chunk_lp = self._logprobs(item.choices) if want_logprobs else None
            if chunk_lp:
                logprobs.extend(chunk_lp)
            delta, call_deltas = (item.delta, []) if calls is None else calls.feed(item.delta)
            if delta or chunk_lp or call_deltas:
                await emit(delta, item.token_ids, chunk_lp, call_deltas or None)
            if item.finish is not None:
                return self._completion(item, plan, calls, logprobs, waiter.first_token_at)

    def _completion(
        self,
        item: Output,
        plan: structured.Plan,
        calls: structured.ToolCallStream | None,
        logprobs: list[TokenLogprobs],
        first_token_at: float | None,
    ) -> Completion:
        usage = Usage(
            item.num_prompt_tokens,
            item.num_output_tokens,
            item.num_prompt_tokens + item.num_output_tokens,
            PromptTokensDetails(item.num_cached_tokens),
        )
        text = item.text or ""
        assert item.finish is not None
        finish: FinishReason = FINISH_REASONS[item.finish]
        tool_calls = None
        if calls is not None:
            text, parsed = structured.parse_tool_calls(text)
            # Streamed calls keep the ids the client saw.
            tool_calls = calls.calls if calls.calls else parsed
            if tool_calls and finish == "stop":
                finish = "tool_calls"
        output = TextOutput(text=text, logprobs=logprobs or None, tool_calls=tool_calls or None)
        return Completion(
            output,
            finish,
            usage,
            first_token_at,
            item.num_output_tokens,
        )

    def _logprobs(self, choices: list[TokenChoice]) -> list[TokenLogprobs]:
        out = []
        for c in choices:
            if c.logprob is None:
                continue
            out.append(
                TokenLogprobs(
                    token=self.tokenizer.decode([c.token_id]),
                    token_id=c.token_id,
                    logprob=c.logprob,
                    top=[TokenLogprob(t, lp) for t, lp in c.top],
                )
            )
        return out

    # -- the engine thread -------------------------------------------------------------------

    def _run_engine(self) -> None:
        engine = self.engine
        try:
            while True:
                if not self._take_commands(block=not engine.has_work()):
                    return
                outputs = engine.step()
                self._capacity = engine.capacity()
                sched = engine.scheduler
                blocks = sched.blocks
                self._stats = BackendStats(
                    len(sched.running),
                    sched.num_waiting,
                    sched.kv_usage(),
                    blocks.num_used,
                    blocks.num_blocks,
                    blocks.stats.queries_tokens,
                    blocks.stats.hits_tokens,
                )
                relay = self._relayed(outputs)
                if relay:
                    self._post(self._dispatch, relay)
        except BaseException as exc:
            log.exception("engine thread died")
            self._dead = exc
            self._post(self._fail_all, exc)

    def _relayed(self, outputs: list[Output]) -> list[Output]:
        """(Engine thread.) The outputs the event loop needs: every one of a request that
        relays all, else only the last; first-token times are recorded here instead, so a
        non-streaming request costs the event loop nothing per token."""
        relay = []
        now = time.time()
        for out in outputs:
            waiter = self._waiters.get(out.id)
            if waiter is None:
                continue
            if waiter.first_token_at is None and out.token_ids:
                waiter.first_token_at = now
            if out.finish is not None or waiter.relay_all:
                relay.append(out)
        return relay

    def _take_commands(self, block: bool) -> bool:
        """Apply queued commands; False once asked to stop."""
        try:
            command = self._commands.get(block=block)
        except queue.Empty:
            return True
        while True:
            if command is _STOP:
                return False
            kind, arg = command
            if kind == "add":
                try:
                    self.engine.add(arg)
                except PermanentError as exc:
                    self._post(self._deliver_error, arg.id, exc)
            elif kind == "abort":
                out = self.engine.abort(arg)
                if out is not None:
                    self._post(self._dispatch, [out])
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return True

    def _post(self, fn: Any, *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the event loop closed during shutdown
            self._loop.call_soon_threadsafe(fn, *args)

    def _dispatch(self, outputs: list[Output]) -> None:
        for out in outputs:
            waiter = self._waiters.get(out.id)
            if waiter is not None:
                waiter.queue.put_nowait(out)

    def _deliver_error(self, request_id: str, exc: BaseException) -> None:
        waiter = self._waiters.get(request_id)
        if waiter is not None:
            waiter.queue.put_nowait(exc)

    def _fail_all(self, exc: BaseException) -> None:
        for waiter in self._waiters.values():
            waiter.queue.put_nowait(exc)
