"""A scripted OpenAI-compatible chat server on 127.0.0.1 for tests and benchmarks.

The server implements ``POST /v1/chat/completions`` with the reply shape of the OpenAI
Chat Completions API, so litellm reaches it over real HTTP with
``model="openai/<name>"`` and ``api_base=server.base_url``. Each request gets one
:class:`Behaviour`: the next one from the scripted queue when the queue is not empty,
otherwise the one the responder function returns for the request body. Behaviours can
inject faults: HTTP errors (429 with ``Retry-After``, 500, 401), a delay past the
client's timeout, a body that is not JSON, a plain-text refusal, and added latency.

Every request is recorded with its headers (minus credentials) and its JSON body, so a
test can assert how many calls were made and what they carried.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Header names that carry credentials; the server never records their values.
CREDENTIAL_HEADERS = frozenset({"authorization", "api-key", "x-api-key"})


@dataclass(frozen=True)
class Behaviour:
    """What the server does with one request.

    Attributes:
        status: HTTP status code of the response.
        content: Assistant message text for a 200 reply; a dict or list is sent as JSON text.
        error_message: Message of the OpenAI-style error body for a non-200 reply.
        headers: Extra response headers, e.g. ``{"Retry-After": "1"}``.
        delay_s: Seconds to wait before replying (latency, or a hang past the timeout).
        raw_body: Bytes sent as the body instead of a JSON reply (a malformed response).
        prompt_tokens: Input token count reported in ``usage``.
        completion_tokens: Output token count reported in ``usage``.
    """

    status: int = 200
    content: str | dict[str, Any] | list[Any] | None = None
    error_message: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    raw_body: bytes | None = None
    prompt_tokens: int = 100
    completion_tokens: int = 20


def json_reply(payload: dict[str, Any] | list[Any], **kwargs: Any) -> Behaviour:
    """Build a 200 reply whose assistant message is ``payload`` as JSON text."""
    return Behaviour(content=payload, **kwargs)


def text_reply(text: str, **kwargs: Any) -> Behaviour:
    """Build a 200 reply whose assistant message is plain text (a refusal, broken JSON)."""
    return Behaviour(content=text, **kwargs)


def rate_limited(retry_after: str | float = 1, **kwargs: Any) -> Behaviour:
    """Build a 429 reply with a ``Retry-After`` header in seconds or as an HTTP date."""
    return Behaviour(
        status=429,
        error_message="Rate limit reached for requests",
        headers={"Retry-After": str(retry_after)},
        **kwargs,
    )


def server_error(status: int = 500, **kwargs: Any) -> Behaviour:
    """Build a 5xx reply."""
    return Behaviour(status=status, error_message="The server had an error", **kwargs)


def auth_error(**kwargs: Any) -> Behaviour:
    """Build a 401 reply as OpenAI sends for an invalid API key."""
    return Behaviour(status=401, error_message="Incorrect API key provided", **kwargs)


def hang(seconds: float) -> Behaviour:
    """Build a reply that arrives only after ``seconds`` (past the client's timeout)."""
    return Behaviour(content={"late": True}, delay_s=seconds)


def malformed_body() -> Behaviour:
    """Build a 200 reply whose HTTP body is not JSON at all."""
    return Behaviour(raw_body=b'{"id": "chatcmpl-broken", "choices": [')


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it.

    Attributes:
        path: Request path, e.g. ``/v1/chat/completions``.
        headers: Request headers with lower-case names, credential headers removed.
        body: Parsed JSON body, or None when the body was not JSON.
        had_credentials: Whether any credential header was present.
        received_at: ``time.monotonic()`` when the request arrived.
    """

    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    had_credentials: bool
    received_at: float

    def prompt_text(self) -> str:
        """Join the text parts of all messages, for matching markers in the prompt."""
        if self.body is None:
            return ""
        return message_text(self.body.get("messages", []))

    def image_urls(self) -> list[str]:
        """List the ``image_url`` URLs of all messages."""
        if self.body is None:
            return []
        urls = []
        for message in self.body.get("messages", []):
            content = message.get("content")
            if isinstance(content, list):
                for part in content:
                    if part.get("type") == "image_url":
                        urls.append(part["image_url"]["url"])
        return urls


def message_text(messages: list[dict[str, Any]]) -> str:
    """Join the text of chat messages, whether content is a string or a list of parts."""
    texts = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(part.get("text", "") for part in content if part.get("type") == "text")
    return "\n".join(texts)


Responder = Callable[[RecordedRequest], Behaviour]


class FakeOpenAIServer:
    """An OpenAI-compatible chat server in a background thread, bound to 127.0.0.1.

    Args:
        responder: Chooses the behaviour for a request when the script queue is empty.
            Without one, requests after the queue get ``{}``.
        expected_api_key: When set, a request whose bearer token differs gets a 401, as
            a real provider does for a wrong key.
        model: Model name echoed in replies.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.

    Attributes:
        requests: Every request received, in arrival order.
        max_in_flight: Largest number of requests handled at the same time.
    """

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        expected_api_key: str | None = None,
        model: str = "fake-vlm",
    ) -> None:
        self.responder = responder
        self.expected_api_key = expected_api_key
        self.model = model
        self.requests: list[RecordedRequest] = []
        self._queue: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._reply_count = 0
        self._in_flight = 0
        self.max_in_flight = 0

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> FakeOpenAIServer:
        """Bind to a free port on 127.0.0.1 and serve in a daemon thread."""
        handler = _make_handler(self)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-openai-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Wake delayed handlers, stop serving and close the socket."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """TCP port the server is bound to."""
        if self._httpd is None:
            raise RuntimeError("the fake server is not started; call start() first")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """Base URL to pass to litellm as ``api_base``."""
        return f"http://127.0.0.1:{self.port}/v1"

    # -- scripting -------------------------------------------------------------------

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next requests, in arrival order."""
        with self._lock:
            self._queue.extend(behaviours)

    @property
    def request_count(self) -> int:
        """Number of requests received so far."""
        with self._lock:
            return len(self.requests)

    def chat_requests(self) -> list[RecordedRequest]:
        """Return the recorded requests to ``/v1/chat/completions``."""
        with self._lock:
            return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def _record(self, request: RecordedRequest) -> Behaviour:
        with self._lock:
            self.requests.append(request)
            queued = self._queue.popleft() if self._queue else None
        if queued is not None:
            return queued
        if self.responder is not None:
            return self.responder(request)
        return json_reply({})

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _next_reply_id(self) -> str:
        with self._lock:
            self._reply_count += 1
            return f"chatcmpl-fake-{self._reply_count}"


def _make_handler(server: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            # The default handler writes every request to stderr.
            return

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            server._enter()
            try:
                self._handle_post()
            finally:
                server._leave()

        def _handle_post(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except json.JSONDecodeError:
                body = None

            headers = {k.lower(): v for k, v in self.headers.items()}
            had_credentials = any(name in headers for name in CREDENTIAL_HEADERS)
            bearer = headers.get("authorization", "")
            public_headers = {k: v for k, v in headers.items() if k not in CREDENTIAL_HEADERS}
            request = RecordedRequest(
                path=self.path,
                headers=public_headers,
                body=body,
                had_credentials=had_credentials,
                received_at=time.monotonic(),
            )
            behaviour = server._record(request)

            if not self.path.endswith("/chat/completions"):
                behaviour = Behaviour(status=404, error_message=f"no route {self.path}")
            elif server.expected_api_key is not None and (
                bearer != f"Bearer {server.expected_api_key}"
            ):
                behaviour = auth_error()

            if behaviour.delay_s > 0 and server._stopping.wait(behaviour.delay_s):
                return
            try:
                self._send(behaviour)
            except (BrokenPipeError, ConnectionResetError):
                # The client gave up (its timeout) before the delayed reply was ready.
                return

        def _send(self, behaviour: Behaviour) -> None:
            if behaviour.raw_body is not None:
                payload = behaviour.raw_body
            elif behaviour.status != 200:
                payload = json.dumps(
                    {
                        "error": {
                            "message": behaviour.error_message,
                            "type": "fake_error",
                            "code": str(behaviour.status),
                        }
                    }
                ).encode()
            else:
                content = behaviour.content
                if not isinstance(content, str):
                    content = json.dumps(content if content is not None else {})
                payload = json.dumps(
                    {
                        "id": server._next_reply_id(),
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": server.model,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": content},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {
                            "prompt_tokens": behaviour.prompt_tokens,
                            "completion_tokens": behaviour.completion_tokens,
                            "total_tokens": behaviour.prompt_tokens + behaviour.completion_tokens,
                        },
                    }
                ).encode()

            self.send_response(behaviour.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in behaviour.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

    return Handler
