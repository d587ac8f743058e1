"""The openai backend's HTTP side: one connection pool to an OpenAI-compatible server.

    connection = Connection("http://127.0.0.1:8000/v1", api_key="", max_in_flight=16)
    data = connection.post("/completions", body)            # one JSON answer
    for chunk in connection.stream_chunks(body): ...        # a streamed completion's chunks
    connection.cancel(); connection.close()

What it owns: the URL's form (`normalize_url`), timeouts and keep-alive, the one retry of a
request the server closed unanswered (`Connection.send`), server-sent events, the open
streams that `cancel` closes, the model list (`list_models`) and every transport or status
problem as one MedchatError sentence. What is asked of the server, and what its answers
mean, is medchat/backends/openai.py's.

The API key goes in the Authorization header only; it is never logged or put in an error.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx

from medchat.errors import MedchatError

CONNECT_SECONDS = 5.0
READ_SECONDS = 600.0  # between two chunks: a CPU server under load can be slow to start
# An idle pooled connection is dropped after this long: well under the 5 s after which vLLM's
# (uvicorn's) keep-alive closes it, so a request is rarely sent on a socket the server is closing.
KEEPALIVE_SECONDS = 2.0
STALE_RETRIES = 2  # fresh-connection retries of a request the server closed unanswered


def normalize_url(url: str) -> str:
    """The API root ending in /v1: 'http://h:8000', 'http://h:8000/' and '.../v1/' all work."""
    url = (url or "").strip().rstrip("/")
    if not url:
        raise MedchatError(
            "The openai backend needs a server URL; pass --server-url "
            "http://HOST:PORT/v1 or set MEDCHAT_SERVER_URL."
        )
    if not url.startswith(("http://", "https://")):
        raise MedchatError(f"Server URL {url!r} is not an http(s) URL; give http://HOST:PORT/v1.")
    return url if url.endswith("/v1") else url + "/v1"


def _server_root(url: str) -> str:
    return url[: -len("/v1")]


class Connection:
    """Requests to one server's API root `url` (…/v1), streams among them, closable at once."""

    def __init__(self, url: str, *, api_key: str = "", max_in_flight: int = 16):
        self.url = normalize_url(url)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(
            max_connections=max(64, 4 * max_in_flight), keepalive_expiry=KEEPALIVE_SECONDS
        )
        timeout = httpx.Timeout(READ_SECONDS, connect=CONNECT_SECONDS)
        self.client = httpx.Client(headers=headers, timeout=timeout, limits=limits)
        self._active: set[httpx.Response] = set()
        self._cancelled: set[int] = set()  # id() of responses closed by cancel()
        self._active_lock = threading.Lock()

    def address(self, path: str, root: bool = False) -> str:
        """`path` under the API root, or under the server's root (/tokenize, /metrics)."""
        return (_server_root(self.url) if root else self.url) + path

    def get(self, path: str, *, root: bool = False) -> httpx.Response:
        try:
            response = self.client.get(self.address(path, root), timeout=CONNECT_SECONDS * 2)
        except httpx.HTTPError as err:
            raise MedchatError(_transport_problem(self.url, err)) from err
        _raise_for_status(response, self.url)
        return response

    def send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        """Send once more on a fresh connection when the server closed a pooled one unanswered.

        A server closes an idle keep-alive connection when it likes; a request written to it
        at that moment gets no response at all. Nothing was generated for it, so sending it
        again on a new connection is safe; any other failure is raised as it is.
        """
        for _ in range(STALE_RETRIES):
            try:
                return self.client.send(request, stream=stream)
            except httpx.RemoteProtocolError:
                continue
        return self.client.send(request, stream=stream)

    def post(self, path: str, body: dict, *, root: bool = False) -> dict:
        request = self.client.build_request("POST", self.address(path, root), json=body)
        try:
            response = self.send(request)
        except httpx.HTTPError as err:
            raise MedchatError(_transport_problem(self.url, err)) from err
        _raise_for_status(response, self.url, body.get("model"))
        return response.json()

    def stream_chunks(self, body: dict, responses: list | None = None) -> Iterator[dict]:
        """The JSON chunks of one server-sent-events completion; closing ends the request.
        `responses`, when given, receives the open HTTP response."""
        request = self.client.build_request("POST", self.address("/completions"), json=body)
        try:
            response = self.send(request, stream=True)
        except httpx.HTTPError as err:
            raise MedchatError(_transport_problem(self.url, err)) from err
        with self._active_lock:
            self._active.add(response)
        if responses is not None:
            responses.append(response)
        try:
            if response.status_code != 200:
                response.read()
                _raise_for_status(response, self.url, body.get("model"))
            try:
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    chunk = json.loads(data)
                    if "error" in chunk:
                        message = (chunk["error"] or {}).get("message", "unknown error")
                        raise MedchatError(f"The model server failed mid-answer: {message}")
                    yield chunk
            except (httpx.HTTPError, httpx.StreamError) as err:
                if id(response) in self._cancelled:
                    return
                raise MedchatError(
                    f"The model server at {self.url} stopped answering mid-answer, so the "
                    "answer is incomplete; try again once the server is back."
                ) from err
        finally:
            with self._active_lock:
                self._active.discard(response)
                self._cancelled.discard(id(response))
            response.close()

    def close_responses(self, responses: list[httpx.Response]) -> None:
        """Close these streams; their readers end quietly, as after `cancel`."""
        with self._active_lock:
            self._cancelled.update(id(r) for r in responses)
        for response in responses:
            response.close()

    def cancel(self) -> None:
        """Close every open stream: the server aborts those requests."""
        with self._active_lock:
            active = list(self._active)
        self.close_responses(active)

    def close(self) -> None:
        self.cancel()
        self.client.close()


def list_models(url: str, api_key: str = "") -> dict[str, dict]:
    """{model id: its /v1/models entry}, or a MedchatError naming what is wrong."""
    url = normalize_url(url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(url + "/models", headers=headers, timeout=CONNECT_SECONDS * 2)
    except httpx.HTTPError as err:
        raise MedchatError(_transport_problem(url, err)) from err
    if response.status_code == 404:
        raise MedchatError(
            f"{url} has no OpenAI-compatible API (GET /models answered 404); give the "
            "server's /v1 URL, e.g. http://127.0.0.1:8000/v1."
        )
    _raise_for_status(response, url)
    try:
        entries = response.json()["data"]
        return {entry["id"]: entry for entry in entries}
    except (ValueError, KeyError, TypeError):
        raise MedchatError(
            f"{url}/models did not answer with an OpenAI model list; is this the server's /v1 URL?"
        ) from None


def _transport_problem(url: str, err: httpx.HTTPError) -> str:
    if isinstance(err, httpx.ConnectError | httpx.ConnectTimeout):
        return f"Cannot reach the model server at {url}; start it (make serve) or fix --server-url."
    if isinstance(err, httpx.TimeoutException):
        return f"The model server at {url} did not answer in time; is it overloaded?"
    return f"The model server at {url} broke the connection ({type(err).__name__}); try again."


def _raise_for_status(response: httpx.Response, url: str, model: str | None = None) -> None:
    if response.status_code < 400:
        return
    if response.status_code in (401, 403):
        raise MedchatError(
            f"The model server at {url} refused the API key; set MEDCHAT_SERVER_API_KEY to the "
            "server's key."
        )
    try:
        detail = response.json()
        detail = (detail.get("error") or {}).get("message") or detail.get("message") or ""
    except (ValueError, AttributeError):
        detail = ""
    if response.status_code == 404 and model:
        raise MedchatError(f"The model server at {url} does not serve model {model!r}.")
    first = str(detail).strip().splitlines()[0][:200] if str(detail).strip() else ""
    raise MedchatError(
        f"The model server at {url} answered {response.status_code}"
        + (f": {first}" if first else "")
        + "."
    )
