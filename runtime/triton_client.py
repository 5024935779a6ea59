"""`TritonRunner`: a Triton Inference Server (HTTP or gRPC) as the runner under the one `Localizer`.

    loc = Localizer(TritonRunner("http://127.0.0.1:8000/tedloc"))  # or "grpc://host:8001", model= "tedloc_python"
    result = loc(frame, color="BGR")                                # the same Result as Localizer("model.onnx")(frame)

The server runs the repository `tedloc-edge export --format triton` writes (`tedloc` ensemble or
`tedloc_python`); both take ``images`` uint8 (n, H, W, 3) at the model's input size plus ``frame_size``
(n, 2) and return boxes in frame pixels, so this is a `BoxRunner`. The Localizer resizes each frame with the
runtime's own `Preprocessor` (so the model sees what it sees locally, and a 224x224 frame is ~150 KB on the
wire instead of ~6 MB for 1080p); the server scales the boxes back to the frame. Class probabilities and
top-k are computed by the Localizer from the returned logits (so ``classes=`` restricts them exactly as
locally); the decode settings given to it (threshold, contour_mode, min_box_area) travel as request
parameters, honoured by ``tedloc_python`` and ``tedloc_decode`` (an ensemble forwards them to its steps).

Faults: a server that is down raises a one-line `UserError` naming the URL within `timeout` seconds. Once
running, a failed request raises `TritonFrameError` (the caller counts it and goes on with the next frame);
while the server is unreachable each call fails fast and the client reconnects (at most every `retry_s`),
so a restarted server is picked up again; after `give_up_s` without a successful request it raises
`UserError`. Thread safety: one lock per instance, callable from any thread (an HTTP connection is opened
per calling thread, as tritonclient's gevent-based HTTP client requires); for parallel requests use one
runner (and Localizer) per thread.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence
from urllib.parse import urlsplit

import numpy as np

from tedloc_edge.bundle import METADATA_KEY, BundleMeta
from tedloc_edge.errors import UserError, first_line
from tedloc_edge.runtime.runner import Boxes, BoxRunner

logger = logging.getLogger(__name__)

PROTOCOLS = ("http", "grpc")
DEFAULT_PORTS = {"http": 8000, "grpc": 8001}
DEFAULT_MODEL = "tedloc"
OUTPUTS = ("boxes", "scores", "num_boxes", "logits")


class TritonFrameError(RuntimeError):
    """One request failed (server error response, timeout or lost connection); the stream can go on."""


@dataclass(frozen=True)
class TritonTarget:
    protocol: str
    address: str  # host:port
    model: str

    def __str__(self) -> str:
        return f"{self.protocol}://{self.address}/{self.model}"


def parse_url(url: str, model: str | None = None, protocol: str | None = None) -> TritonTarget:
    """``[http|grpc://]host[:port][/model]`` -> target; `model` / `protocol` arguments win over the URL's."""
    text = str(url).strip()
    if "://" not in text:
        text = f"{protocol or 'http'}://{text}"
    parts = urlsplit(text)
    scheme = (protocol or parts.scheme or "http").lower()
    if scheme == "https":
        raise UserError(f"{url}: TLS is not supported by this client; use http:// on a trusted network or grpc://")
    if scheme not in PROTOCOLS:
        raise UserError(f"{url}: protocol must be http or grpc, not {scheme!r}")
    if not parts.hostname:
        raise UserError(f"{url}: no host; give the Triton server as host:port, e.g. 127.0.0.1:8000")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise UserError(f"{url}: the port is not a number") from None
    path_model = parts.path.strip("/").split("/")[0] if parts.path.strip("/") else ""
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return TritonTarget(scheme, f"{host}:{port}", model or path_model or DEFAULT_MODEL)


class _Connection:
    """A tritonclient client of one protocol, with the calls this module needs in one shape."""

    def __init__(self, target: TritonTarget, timeout: float) -> None:
        self.target = target
        self.timeout = float(timeout)
        self.thread = threading.get_ident()  # tritonclient's HTTP client (gevent) works only in this thread
        if target.protocol == "http":
            import tritonclient.http as mod

            self.client = mod.InferenceServerClient(
                target.address, connection_timeout=self.timeout, network_timeout=self.timeout
            )
        else:
            import tritonclient.grpc as mod

            self.client = mod.InferenceServerClient(target.address)
        self.mod = mod

    def ready(self) -> None:
        """Raise unless the server is live and the model ready (bounded by the timeout)."""
        kw = {} if self.target.protocol == "http" else {"client_timeout": self.timeout}
        if not self.client.is_server_live(**kw):
            raise ConnectionError("server is not live")
        if not self.client.is_model_ready(self.target.model, **kw):
            raise LookupError(f"model '{self.target.model}' is not ready on the server")

    def meta(self) -> tuple[BundleMeta, int]:
        """The bundle from the model's config parameters, and the model's max_batch_size."""
        if self.target.protocol == "http":
            config = self.client.get_model_config(self.target.model)
        else:
            config = self.client.get_model_config(self.target.model, as_json=True, client_timeout=self.timeout)["config"]
        params = config.get("parameters", {})
        text = params.get(METADATA_KEY, {}).get("string_value")
        if not text:
            raise UserError(
                f"{self.target}: the model's config.pbtxt has no '{METADATA_KEY}' parameter; "
                "serve the repository written by `tedloc-edge export RUN --format triton`"
            )
        return BundleMeta.from_json(text, f"{self.target} config.pbtxt"), int(config.get("max_batch_size", 0) or 0)

    def infer(self, images: np.ndarray, frame_size: np.ndarray, params: dict[str, Any] | None) -> dict[str, np.ndarray]:
        mod = self.mod
        inputs = [mod.InferInput("images", list(images.shape), "UINT8"), mod.InferInput("frame_size", list(frame_size.shape), "INT32")]
        inputs[0].set_data_from_numpy(images)
        inputs[1].set_data_from_numpy(frame_size)
        if self.target.protocol == "http":
            outputs = [mod.InferRequestedOutput(n, binary_data=True) for n in OUTPUTS]
            response = self.client.infer(self.target.model, inputs, outputs=outputs, parameters=params)
        else:
            outputs = [mod.InferRequestedOutput(n) for n in OUTPUTS]
            response = self.client.infer(self.target.model, inputs, outputs=outputs, parameters=params, client_timeout=self.timeout)
        return {n: response.as_numpy(n) for n in OUTPUTS}

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a dead connection may raise anything
            pass


class TritonRunner(BoxRunner):
    """A model served by Triton (`tedloc` ensemble or `tedloc_python`); max_batch never exceeds the server's."""

    frame_errors = (TritonFrameError,)

    def __init__(
        self,
        url: str,
        model: str | None = None,
        protocol: str | None = None,
        timeout: float = 5.0,
        max_batch: int = 8,
        retry_s: float = 0.5,
        give_up_s: float = 60.0,
    ) -> None:
        self.target = parse_url(url, model, protocol)
        self.url = self.source = str(self.target)
        self.name = f"triton-{self.target.protocol}"
        self.timeout = float(timeout)
        self.retry_s = float(retry_s)
        self.give_up_s = float(give_up_s)
        self.stats = {"requests": 0, "frames": 0, "errors": 0, "reconnects": 0}  # frames: answered; errors: frames failed
        self._lock = threading.Lock()
        self._local = threading.local()  # one connection per calling thread (tritonclient's HTTP client needs it)
        self._all: list[_Connection] = []
        self._lost = False
        self._last_ok = time.monotonic()
        self._next_try = 0.0
        try:
            self._local.conn = self._connect()
            self.meta, server_batch = self._local.conn.meta()
        except UserError:
            self.close()
            raise
        except Exception as exc:  # noqa: BLE001 - tritonclient raises its own and socket errors
            self.close()
            raise UserError(f"Triton server at {self.url} is not reachable: {first_line(exc)}; start it or check --triton") from None
        self.max_batch = max(1, min(int(max_batch), server_batch or int(max_batch)))
        logger.debug("TritonRunner(%s): %d classes, input %s", self.url, self.meta.num_classes, self.meta.input_size)

    def _connect(self) -> _Connection:
        conn = _Connection(self.target, self.timeout)
        try:
            conn.ready()
        except BaseException:
            conn.close()
            raise
        self._all.append(conn)
        return conn

    def _ensure_connection(self) -> _Connection:
        """This thread's live connection, or a new one (at most every retry_s after a failure); raises
        TritonFrameError while the server is unreachable and UserError after give_up_s of that."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        now = time.monotonic()
        if now - self._last_ok > self.give_up_s:
            raise UserError(f"Triton server at {self.url} has not answered for {self.give_up_s:.0f} s; stopping")
        if now < self._next_try:
            raise TritonFrameError(f"Triton server at {self.url} is unreachable (reconnecting)")
        try:
            conn = self._connect()
        except Exception as exc:  # noqa: BLE001
            self._next_try = time.monotonic() + self.retry_s
            raise TritonFrameError(f"Triton server at {self.url} is unreachable: {first_line(exc)}") from None
        self._local.conn = conn
        if self._lost:
            self._lost = False
            self.stats["reconnects"] += 1
            logger.info("reconnected to Triton server at %s", self.url)
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            if conn in self._all:
                self._all.remove(conn)
        self._local.conn = None
        self._lost = True
        self._next_try = time.monotonic() + self.retry_s

    def _infer_boxes(self, images: np.ndarray, frame_shapes: Sequence[tuple[int, int]], overrides: dict[str, object]) -> Boxes:
        """One request. Raises TritonFrameError for a failed one (count it, go on) and UserError when the server
        stayed away for give_up_s."""
        n = len(images)
        frame_size = np.array(frame_shapes, dtype=np.int32).reshape(n, 2)
        with self._lock:
            self.stats["requests"] += 1
            try:
                conn = self._ensure_connection()
            except TritonFrameError:
                self.stats["errors"] += n
                raise
            try:
                out = conn.infer(images, frame_size, overrides or None)
            except Exception as exc:  # noqa: BLE001 - server error response, timeout, lost connection
                self.stats["errors"] += n
                if not self._is_server_error(exc):
                    self._drop_connection()  # transport problem: reconnect on a later call
                raise TritonFrameError(f"Triton request to {self.url} failed: {first_line(exc)}") from None
            self._last_ok = time.monotonic()
            self.stats["frames"] += n
        counts = [int(np.ravel(out["num_boxes"][i])[0]) for i in range(n)]  # rows past num_boxes are padding
        return Boxes(
            boxes=[np.ascontiguousarray(out["boxes"][i, :k], dtype=np.float32).reshape(k, 4) for i, k in enumerate(counts)],
            box_scores=[np.ascontiguousarray(out["scores"][i, :k], dtype=np.float32) for i, k in enumerate(counts)],
            logits=np.asarray(out["logits"], dtype=np.float32),
        )

    def warmed_up(self) -> None:
        self.stats.update(requests=0, frames=0, errors=0)

    @staticmethod
    def _is_server_error(exc: BaseException) -> bool:
        """A Triton error response (bad input, model error): the connection itself is fine."""
        status = getattr(exc, "status", None)
        code = str(status() if callable(status) else status or "")
        if not code or code in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED"):
            return False
        return True

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
            self._local = threading.local()
