"""A real RTSP server for the tests: GStreamer's gst-rtsp-server serving live H.264 on 127.0.0.1.

The server runs in Debian's own Python (`/usr/bin/python3`, where `python3-gi` and the GStreamer typelibs
live), as a child process in its own process group, so a test can kill it mid-stream and start it again on
the same port. `.ci/setup` installs the Debian packages when they are missing; where they cannot be had,
`rtsp_unavailable()` says why and the tests skip with that reason.

    with RtspServer(width=640, height=360, fps=30) as server:
        url = server.url                    # rtsp://127.0.0.1:PORT/cam
        server.kill(); server.start()       # a camera that drops off and comes back
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
READY_TIMEOUT_S = 20.0

# One shared media per mount: every client sees the same live stream, as from a camera. The moving ball gives
# the encoder real motion; key frames every second let a reconnecting client start decoding quickly.
SERVER_SCRIPT = r"""
import sys
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer

port, width, height, fps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},framerate={fps}/1 "
    f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} bitrate=800 "
    "! rtph264pay name=pay0 pt=96 config-interval=1 )"
)
factory.set_shared(True)
server.get_mount_points().add_factory("/cam", factory)
if server.attach(None) == 0:
    sys.exit("cannot bind 127.0.0.1:" + port)
print("ready", flush=True)
GLib.MainLoop().run()
"""

PROBE_SCRIPT = r"""
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer
Gst.init(None)
missing = [e for e in ("videotestsrc", "x264enc", "rtph264pay") if Gst.ElementFactory.find(e) is None]
print(",".join(missing))
"""


def rtsp_unavailable() -> str | None:
    """None when a server can start here, else the reason (for pytest.skip)."""
    if not Path(SYSTEM_PYTHON).is_file():
        return f"{SYSTEM_PYTHON} not found (the Debian python3-gi packages run there)"
    try:
        probe = subprocess.run([SYSTEM_PYTHON, "-c", PROBE_SCRIPT], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot probe GStreamer: {exc}"
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["unknown error"])[-1]
        return f"GStreamer RTSP server not installed ({last}); apt-get install gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-ugly"
    if probe.stdout.strip():
        return f"GStreamer elements missing: {probe.stdout.strip()}"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RtspServer:
    """One gst-rtsp-server process on 127.0.0.1; `kill()` and `start()` keep the port, as a camera that reboots."""

    def __init__(self, width: int = 640, height: int = 360, fps: int = 30, port: int | None = None):
        self.width, self.height, self.fps = width, height, fps
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def start(self) -> "RtspServer":
        args = [SYSTEM_PYTHON, "-c", SERVER_SCRIPT, str(self.port), str(self.width), str(self.height), str(self.fps)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}  # not the venv's Python paths
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env, start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"RTSP server exited: {self.proc.stderr.read()[-500:] if self.proc.stderr else ''}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"RTSP server on port {self.port} not ready after {READY_TIMEOUT_S:.0f} s")

    def kill(self) -> None:
        """SIGKILL the whole process group: the stream stops mid-frame, as when a camera loses power."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)

    def __enter__(self) -> "RtspServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
