"""`TritonLocalizer`: the Localizer's face in front of a Triton Inference Server (HTTP or gRPC).

    loc = TritonLocalizer("http://127.0.0.1:8000/tedloc")     # or "grpc://host:8001", model= "tedloc_python"
    result = loc(frame, color="BGR")                          # the same Result as Localizer(...)(frame)

The server runs the repository `tedloc-edge export --format triton` writes (`tedloc` ensemble or
`tedloc_python`); both take ``images`` uint8 (n, H, W, 3) at the model's input size plus ``frame_size``
(n, 2) and return boxes in frame pixels. The client resizes each frame itself with the runtime's own
`Preprocessor` (so the model sees what the local Localizer feeds it, and a 224x224 frame is ~150 KB on the
wire instead of ~6 MB for 1080p); the server scales the boxes back to the frame. Class probabilities and
top-k are computed here from the returned logits (so ``classes=`` restricts them exactly as locally).

Faults: a server that is down raises a one-line `UserError` naming the URL within `timeout` seconds. Once
running, a failed request raises `TritonFrameError` (the caller counts it and goes on with the next frame);
while the server is unreachable each call fails fast and the client reconnects (at most every `retry_s`),
so a restarted server is picked up again; after `give_up_s` without a successful request it raises
`UserError`. Thread safety: one lock per instance (like Localizer), callable from any thread (an HTTP
connection is opened per calling thread, as tritonclient's gevent-based HTTP client requires); for parallel
requests use one TritonLocalizer per thread.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence
from urllib.parse import urlsplit

import numpy as np

from tedloc_edge.bundle import METADATA_KEY, BundleMeta
from tedloc_edge.errors import UserError, first_line
from tedloc_edge.runtime.postprocess import DecodeConfig, class_probabilities
from tedloc_edge.runtime.preprocess import Preprocessor, as_uint8_3ch, check_color
from tedloc_edge.runtime.result import Result

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


class TritonLocalizer:
    """Frames in, `Result`s out, inference on a Triton server. Arguments mirror `Localizer`'s.

    `threshold`, `contour_mode`, `min_box_area` are sent as request parameters (honoured by
    ``tedloc_python`` and ``tedloc_decode``; an ensemble forwards them to its steps) only when given.
    """

    def __init__(
        self,
        url: str,
        model: str | None = None,
        protocol: str | None = None,
        timeout: float = 5.0,
        threshold: float | None = None,
        contour_mode: str | None = None,
        min_box_area: int = 0,
        max_batch: int = 8,
        topk: int = 5,
        classes: str | Iterable[str | int] | None = None,
        retry_s: float = 0.5,
        give_up_s: float = 60.0,
        return_map: bool = False,
    ) -> None:
        from tedloc_edge.runtime.localizer import resolve_classes

        if return_map:
            raise UserError("the localization map (--heatmap) is not sent by the Triton models; run without --heatmap or locally")

        self.target = parse_url(url, model, protocol)
        self.url = str(self.target)
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
        self.decode = DecodeConfig(
            threshold=self.meta.threshold if threshold is None else float(threshold),
            contour_mode=contour_mode or self.meta.contour_mode,
            min_box_area=int(min_box_area),
            topk=int(topk),
        )
        self._params: dict[str, Any] = {}
        if threshold is not None:
            self._params["threshold"] = float(threshold)
        if contour_mode is not None:
            self._params["contour_mode"] = contour_mode
        if min_box_area:
            self._params["min_box_area"] = int(min_box_area)
        self.allowed = resolve_classes(classes, self.meta.class_names)
        self.max_batch = max(1, min(int(max_batch), server_batch or int(max_batch)))  # never above the server's
        self._pre = Preprocessor(self.meta.input_size, self.max_batch, self.meta.preprocess)
        logger.debug("TritonLocalizer(%s): %d classes, input %s", self.url, self.meta.num_classes, self.meta.input_size)

    @property
    def backend(self) -> str:
        return f"triton-{self.target.protocol}"

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

    def __call__(self, frames: np.ndarray | Sequence[np.ndarray], color: str = "RGB") -> Result | list[Result]:
        """One frame -> Result; a list or an (N, H, W, 3) array -> list[Result]. Raises TritonFrameError for
        a failed request (count it, go on) and UserError when the server stayed away for give_up_s."""
        color = check_color(color)
        single = isinstance(frames, np.ndarray) and frames.ndim in (2, 3)
        batch = [frames] if single else list(frames)
        if not batch:
            return []
        results: list[Result] = []
        with self._lock:
            for start in range(0, len(batch), self.max_batch):
                results.extend(self._run(batch[start : start + self.max_batch], color))
        return results[0] if single else results

    def _run(self, frames: list[np.ndarray], color: str) -> list[Result]:
        frames = [as_uint8_3ch(f, color, f"frame {i}") for i, f in enumerate(frames)]
        n = len(frames)
        t0 = time.perf_counter()
        images = self._pre(frames, color)
        frame_size = np.array([f.shape[:2] for f in frames], dtype=np.int32)
        t1 = time.perf_counter()
        self.stats["requests"] += 1
        try:
            conn = self._ensure_connection()
        except TritonFrameError:
            self.stats["errors"] += n
            raise
        try:
            out = conn.infer(images, frame_size, self._params or None)
        except Exception as exc:  # noqa: BLE001 - server error response, timeout, lost connection
            self.stats["errors"] += n
            if not self._is_server_error(exc):
                self._drop_connection()  # transport problem: reconnect on a later call
            raise TritonFrameError(f"Triton request to {self.url} failed: {first_line(exc)}") from None
        self._last_ok = time.monotonic()
        t2 = time.perf_counter()
        results = [self._result(out, i, (int(frame_size[i, 0]), int(frame_size[i, 1]))) for i in range(n)]
        t3 = time.perf_counter()
        self.stats["frames"] += n
        speed = {"preprocess": (t1 - t0) * 1e3 / n, "inference": (t2 - t1) * 1e3 / n, "postprocess": (t3 - t2) * 1e3 / n}
        for r in results:
            r.speed = dict(speed)
        return results

    def warmup(self) -> None:
        """One request on a blank frame: the model really runs on the server, and the first real frame's
        timings do not carry its start-up. A failure is one line naming the URL."""
        h, w = self.meta.input_size
        try:
            self(np.zeros((h, w, 3), np.uint8))
        except TritonFrameError as exc:
            raise UserError(f"{exc}; check the server's log") from None
        finally:
            self.stats.update(requests=0, frames=0, errors=0)

    @staticmethod
    def _is_server_error(exc: BaseException) -> bool:
        """A Triton error response (bad input, model error): the connection itself is fine."""
        status = getattr(exc, "status", None)
        code = str(status() if callable(status) else status or "")
        if not code or code in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED"):
            return False
        return True

    def _result(self, out: dict[str, np.ndarray], i: int, frame_shape: tuple[int, int]) -> Result:
        k = int(np.ravel(out["num_boxes"][i])[0])
        boxes = np.ascontiguousarray(out["boxes"][i, :k], dtype=np.float32).reshape(k, 4)
        box_scores = np.ascontiguousarray(out["scores"][i, :k], dtype=np.float32)
        probs = class_probabilities(np.asarray(out["logits"][i], dtype=np.float32), self.allowed)
        top = np.argsort(-probs, kind="stable")[: min(self.decode.topk, len(probs) if self.allowed is None else len(self.allowed))]
        names = self.meta.class_names
        best = int(top[0])
        return Result(
            boxes=boxes,
            box_scores=box_scores,
            class_id=best,
            class_name=names[best],
            score=float(probs[best]),
            topk=[(int(c), names[int(c)], float(probs[c])) for c in top],
            orig_shape=frame_shape,
        )

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
            self._local = threading.local()

    def __enter__(self) -> "TritonLocalizer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TritonLocalizer({self.url!r}, classes={self.meta.num_classes}, max_batch={self.max_batch})"

