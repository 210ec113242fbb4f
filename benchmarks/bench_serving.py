"""The served model under load and under garbage: `mlflow models serve` of a registered model over HTTP.

    .venv/bin/python benchmarks/bench_serving.py [--model activessf-classifier] [--alias champion] \
        [--requests 500] [--concurrency 8]

Serves ``models:/MODEL@ALIAS`` with ``mlflow models serve --env-manager local`` on 127.0.0.1 (the
store of ``make demo`` unless ``MLFLOW_TRACKING_URI`` names another), on synthetic smear fields
(512x384) and 64 px cell crops made here, then:

- load: every distinct request once in turn (the reference answers), a warm-up of 48 requests, then
  ``--requests`` requests (3 single cell crops to 1 whole field) from ``--concurrency`` threads:
  throughput, p50/p95/p99 latency, status codes, answers that differ from the reference, and the
  resident memory of the server's process tree after the warm-up, at its peak and at the end;
- fuzz: malformed requests (bad JSON, wrong types, missing fields, huge bodies, truncated and
  non-image bytes, images over the pixel limit, ...), each expecting a 4xx and a reason; then one
  valid request, which must get the reference answer.

JSON goes to ``benchmarks/results/serving.json``. The test ``tests/serving/test_serving_load.py``
runs the same load and fuzz against the test session's served model.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import struct
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

JSON = "application/json"
COLUMNS = ["image", "kind"]


# ------------------------------------------------------------------ the server and its memory


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if requests.get(f"{self.url}/ping", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the model server did not come up:\n{self.log_tail()}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Terminate the server (the mlflow command and the uvicorn it started), by process id."""
        tree = descendants(self.process.pid)
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for pid in tree:  # uvicorn gets SIGTERM when its parent dies; make sure
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(model_uri: str, env: dict, log: Path, ready_timeout: float = 120) -> Iterator[Server]:
    """``mlflow models serve -m model_uri --env-manager local`` on a free loopback port, stopped on exit."""
    bin_dir = Path(sys.executable).parent  # mlflow starts uvicorn from PATH: this environment's first
    env = {**env, "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"}
    port = free_port()
    with open(log, "w") as out:  # a file, not a pipe: a full pipe would stall the server
        process = subprocess.Popen([str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager",
                                    "local", "--host", "127.0.0.1", "--port", str(port)],
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
        server = Server(f"http://127.0.0.1:{port}", process, Path(log))
        try:
            server.wait_ready(ready_timeout)
            yield server
        finally:
            server.stop()


def descendants(root: int) -> list[int]:
    """Process ids of every descendant of ``root`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended meanwhile
            continue
        ppid = int(text[text.rfind(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def tree_rss_mib(root: int) -> float:
    """Resident memory of ``root`` and its descendants, MiB."""
    total_kib = 0
    for pid in [root, *descendants(root)]:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total_kib += int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) if "VmRSS" in status else 0
    return round(total_kib / 1024, 1)


# ------------------------------------------------------------------ requests


@dataclass
class Request:
    name: str
    body: bytes
    content_type: Optional[str] = JSON


@dataclass
class Answer:
    name: str
    status: int  # 0: no answer within the timeout (or the connection failed)
    seconds: float
    text: str


def request_body(images: list[bytes], kinds: list) -> bytes:
    rows = [[base64.b64encode(b).decode(), k] for b, k in zip(images, kinds)]
    return json.dumps({"dataframe_split": {"columns": COLUMNS, "data": rows}}).encode()


_local = threading.local()


def _session() -> requests.Session:
    """This thread's keep-alive session."""
    if not hasattr(_local, "session"):
        _local.session = requests.Session()
    return _local.session


def send(url: str, req: Request, timeout: float) -> Answer:
    """POST ``req`` to ``url``/invocations."""
    session = _session()
    headers = {"Content-Type": req.content_type} if req.content_type else {}
    start = time.perf_counter()
    try:
        res = session.post(f"{url}/invocations", data=req.body, headers=headers, timeout=timeout)
        status, text = res.status_code, res.text
    except requests.RequestException as exc:
        status, text = 0, f"{type(exc).__name__}: {exc}"
    return Answer(req.name, status, time.perf_counter() - start, text)


def send_all(url: str, reqs: list[Request], concurrency: int, timeout: float = 60) -> tuple[list[Answer], float]:
    """Every request from ``concurrency`` threads; the answers in request order and the wall seconds."""
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(lambda r: send(url, r, timeout), reqs))
    return answers, time.perf_counter() - start


# ------------------------------------------------------------------ load


def cell_crops(labelled: list[Path], n: int = 16, size: int = 64) -> list[bytes]:
    """PNG bytes of ``n`` labelled cell crops resized to ``size`` px."""
    import cv2

    from activessf.imageio import encode_png, read_rgb

    return [encode_png(cv2.resize(read_rgb(p), (size, size), interpolation=cv2.INTER_AREA)) for p in labelled[:n]]


def load_mix(fields: list[bytes], cells: list[bytes], n: int, field_every: int = 4) -> list[Request]:
    """``n`` requests of one image each: a whole field every ``field_every``-th, a cell crop otherwise."""
    reqs = []
    for i in range(n):
        if i % field_every == 0:
            j = (i // field_every) % len(fields)
            reqs.append(Request(f"field{j}", request_body([fields[j]], ["field"])))
        else:
            j = i % len(cells)
            reqs.append(Request(f"cell{j}", request_body([cells[j]], ["cell"])))
    return reqs


def same_predictions(a: list[dict], b: list[dict], atol: float = 1e-5) -> bool:
    """The same cells (boxes, subtypes) with the same probabilities up to ``atol``."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if {k: v for k, v in x.items() if not isinstance(v, float)} != \
                {k: v for k, v in y.items() if not isinstance(v, float)}:
            return False
        if any(abs(x[k] - y[k]) > atol for k in x if isinstance(x[k], float)):
            return False
    return True


def predictions(answer: Answer) -> Optional[list[dict]]:
    return json.loads(answer.text)["predictions"] if answer.status == 200 else None


def reference(url: str, reqs: list[Request]) -> dict[str, list[dict]]:
    """The answer to every distinct request, asked one at a time."""
    distinct = list({r.name: r for r in reqs}.values())
    answers, _ = send_all(url, distinct, 1)
    bad = [a for a in answers if a.status != 200]
    if bad:
        raise RuntimeError(f"{bad[0].name}: HTTP {bad[0].status}: {bad[0].text[:1000]}")
    return {a.name: predictions(a) for a in answers}


def load(server: Server, fields: list[bytes], cells: list[bytes], n: int = 500, concurrency: int = 8,
         warmup: int = 48) -> dict:
    """The load run of the module docstring; returns its figures (and ``wrong``: names of wrong answers)."""
    reqs = load_mix(fields, cells, n)
    ref = reference(server.url, reqs)
    send_all(server.url, load_mix(fields, cells, warmup), concurrency)
    from common import TreeSampler  # beside this file

    rss_warm = tree_rss_mib(server.process.pid)
    with TreeSampler(server.process.pid, every=0.25) as rss:
        answers, seconds = send_all(server.url, reqs, concurrency)
    rss_end = tree_rss_mib(server.process.pid)
    ms = np.array([a.seconds * 1000 for a in answers])
    statuses = Counter(a.status for a in answers)
    wrong = [a.name for a in answers if a.status == 200 and not same_predictions(predictions(a), ref[a.name])]
    return {"requests": n, "concurrency": concurrency, "warmup_requests": warmup,
            "mix": {"field_512x384": sum(r.name.startswith("field") for r in reqs),
                    "cell_64px": sum(r.name.startswith("cell") for r in reqs)},
            "seconds": round(seconds, 2), "throughput_rps": round(n / seconds, 1),
            "latency_ms": {q: round(float(np.percentile(ms, int(q[1:]))), 1) for q in ("p50", "p95", "p99")}
            | {"max": round(float(ms.max()), 1)},
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "server_errors": sum(v for k, v in statuses.items() if k >= 500 or k == 0),
            "wrong_answers": len(wrong), "wrong": wrong[:10],
            "rss_mib": {"after_warmup": rss_warm, "peak": round(max(rss.peak_mib, rss_end), 1), "end": rss_end,
                        "growth": round(rss_end / rss_warm - 1, 4)}}


# ------------------------------------------------------------------ fuzz


@dataclass
class Case:
    category: str
    request: Request
    status: int = 400
    reason: str = ""  # a regular expression the answer's text must match


@dataclass
class FuzzLimits:
    max_image_pixels: int
    max_image_bytes: int = 20_000_000
    max_images: int = 64
    max_request_bytes: int = 64_000_000


def _pil(img, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _split(rows, columns=COLUMNS) -> bytes:
    return json.dumps({"dataframe_split": {"columns": columns, "data": rows}}).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class _Cases:
    items: list = field(default_factory=list)

    def add(self, category: str, name: str, body, status: int = 400, reason: str = "",
            content_type: Optional[str] = JSON) -> None:
        body = body.encode() if isinstance(body, str) else body
        self.items.append(Case(category, Request(f"{category}/{name}", body, content_type), status, reason))


NOT_JSON = r"not valid JSON"
NOT_REQUEST = r"must be a JSON dictionary with exactly one of the input fields"
NOT_SIGNATURE = r"not compatible with model signature|Failed to enforce schema|missing inputs \['image'\]"
BAD_IMAGE = r"image 0: (not an image|not a readable image header|corrupt or truncated|truncated JPEG|empty)"


def fuzz_cases(cell: bytes, field_png: bytes, limits: FuzzLimits, seed: int = 0) -> list[Case]:
    """Malformed requests by category, each with the status and reason it must get (about 330)."""
    c = _Cases()
    _empty_and_bad_json(c, cell)
    _not_a_request(c, cell)
    _bad_frames(c, cell)
    _wrong_types(c, cell)
    _wrong_kind(c, cell)
    _non_image_bytes(c, np.random.default_rng(seed))
    _truncated(c, cell, field_png)
    _over_limits(c, cell, limits)
    _wrong_content_type(c, cell)
    return c.items


def _empty_and_bad_json(c: _Cases, cell: bytes) -> None:
    for name, body in [("empty", b""), ("space", b" "), ("newline", b"\n"), ("nul", b"\0")]:
        c.add("empty body", name, body, reason=NOT_JSON)
    c.add("empty body", "no content type", b"", 415, r"no Content-Type", content_type=None)
    c.add("empty body", "csv", b"", 400, r"[Pp]arse|[Ee]mpty|columns", content_type="text/csv")
    valid = _split([[_b64(cell), "cell"]])
    for k, cut in enumerate(np.linspace(1, len(valid) - 1, 40).astype(int)):
        c.add("bad JSON", f"truncated at {cut}", valid[:cut], reason=NOT_JSON)
    bad = {"single quotes": "{'dataframe_split': {}}", "trailing comma": '{"dataframe_split": {"data": [],},}',
           "bare word": "dataframe_split", "comment": '{"a": 1} // no', "two objects": '{"a": 1}{"b": 2}',
           "unquoted key": "{dataframe_split: 1}", "not utf-8": b"\xff\xfe\xfa{}",
           "latin-1 text": '{"a": "caf\xe9"}'.encode("latin-1"), "control chars": '{"a": "\x01\x02"}',
           "5000-digit int": '{"dataframe_split": ' + "9" * 5000 + "}", "html": "<html><body>hi</body></html>",
           "yaml": "dataframe_split:\n  data: []\n", "xml": "<?xml version='1.0'?><a/>"}
    for name, body in bad.items():
        c.add("bad JSON", name, body, reason=NOT_JSON)
    for name, body in [("list nested 100k", "[" * 100_000 + "]" * 100_000),
                       ("object nested 50k", '{"a":' * 50_000 + "1" + "}" * 50_000)]:
        c.add("bad JSON", name, body, reason=r"nested too deeply")


def _not_a_request(c: _Cases, cell: bytes) -> None:
    b = _b64(cell)
    for name, body in [("list", [1, 2]), ("number", 3), ("string", "x"), ("null", None), ("true", True), ("NaN", "NaN"),
                       ("list of requests", [{"dataframe_split": {"columns": COLUMNS, "data": [[b, "cell"]]}}])]:
        c.add("JSON not a request", name, json.dumps(body), reason=r"must be a JSON dictionary")
    for name, body in [("empty object", {}), ("other key", {"data": [[b, "cell"]]}),
                       ("params only", {"params": {}}), ("two formats", {"dataframe_split": {}, "inputs": []}),
                       ("misspelled", {"dataframe_splits": {"columns": COLUMNS, "data": [[b, "cell"]]}})]:
        c.add("JSON not a request", name, json.dumps(body), reason=NOT_REQUEST)


def _bad_frames(c: _Cases, cell: bytes) -> None:
    b = _b64(cell)
    split = [("no data", {"columns": COLUMNS}, r"must have 'data' field"), ("string", "abc", r"must be a dictionary"),
             ("number", 5, r"must be a dictionary"), ("data string", {"columns": COLUMNS, "data": "abc"}, r"split"),
             ("row too short", {"columns": COLUMNS, "data": [[b]]}, r"2 columns passed, passed data had 1"),
             ("row too long", {"columns": COLUMNS, "data": [[b, "cell", 1]]}, r"passed data had 3"),
             ("no columns", {"data": [[b, "cell"]]}, NOT_SIGNATURE),
             ("numeric columns", {"columns": [1, 2], "data": [[b, "cell"]]}, NOT_SIGNATURE),
             ("no image column", {"columns": ["picture", "kind"], "data": [[b, "cell"]]}, NOT_SIGNATURE),
             ("kind only", {"columns": ["kind"], "data": [["cell"]]}, NOT_SIGNATURE),
             ("duplicate columns", {"columns": ["image", "image"], "data": [[b, b]]}, NOT_SIGNATURE + r"|dtype"),
             ("zero rows", {"columns": COLUMNS, "data": []}, r"no rows"),
             ("data object", {"columns": COLUMNS, "data": {"a": 1}}, r"no rows")]
    for name, body, reason in split:
        c.add("malformed dataframe", name, json.dumps({"dataframe_split": body}), reason=reason)
    records = [("object", {"image": b}, r"must be a list of records"), ("string", "abc", r"must be a list"),
               ("numbers", [1, 2], NOT_SIGNATURE), ("no image", [{"kind": "cell"}], NOT_SIGNATURE),
               ("mixed", [{"image": b}, {"kind": "cell"}], NOT_SIGNATURE), ("empty", [], r"no rows|Empty|missing")]
    for name, body, reason in records:
        c.add("malformed dataframe", f"records {name}", json.dumps({"dataframe_records": body}), reason=reason)
    tf = [("inputs null", {"inputs": None}), ("inputs number", {"inputs": 5}),
          ("inputs ragged", {"inputs": [[1, 2], [3]]}),
          ("instances string", {"instances": "abc"}), ("instances nested", {"instances": [[[1]]]}),
          ("inputs base64 text", {"inputs": {"image": [b], "kind": ["cell"]}})]
    for name, body in tf:
        c.add("malformed dataframe", name, json.dumps(body),
              reason=NOT_SIGNATURE + r"|inhomogeneous|2-d input|base64 text of an image")


def _wrong_types(c: _Cases, cell: bytes) -> None:
    for name, value in [("int", 5), ("float", 1.5), ("true", True), ("null", None), ("list", [1, 2]),
                        ("dict", {"b64": _b64(cell)}), ("negative", -1), ("zero", 0)]:
        c.add("wrong type", f"image {name}", _split([[value, "cell"]]), reason=NOT_SIGNATURE)
    for token in ("NaN", "Infinity", "-Infinity"):  # JSON extensions Python's parser takes
        body = '{"dataframe_split": {"columns": ["image", "kind"], "data": [[%s, "cell"]]}}' % token
        c.add("wrong type", f"image {token}", body, reason=NOT_SIGNATURE)
    for name, text in [("bad characters", "!!!not base64***"), ("bad padding", "abc"), ("one char", "a"),
                       ("padding only", "===="), ("unicode", "ïmägé"), ("data url", "data:image/png;base64,")]:
        c.add("bad base64", name, _split([[text, "cell"]]),
              reason=NOT_SIGNATURE + r"|Incorrect padding|base64|" + BAD_IMAGE)
    c.add("bad base64", "empty string", _split([["", "cell"]]), reason=r"image 0: empty or not binary")
    c.add("bad base64", "twice encoded", _split([[_b64(_b64(cell).encode()), "cell"]]),
          reason=r"base64 text of an image, not the image")


def _wrong_kind(c: _Cases, cell: bytes) -> None:
    b = _b64(cell)
    for name, kind in [("smear", "smear"), ("empty", ""), ("upper case", "CELL"), ("space", " cell"),
                       ("int", 1), ("true", True), ("list", ["cell"]), ("dict", {"k": "cell"}),
                       ("unicode", "célł\u0000"), ("long", "x" * 100_000), ("cells", "cells"), ("crop", "crop")]:
        c.add("wrong kind", name, _split([[b, kind]]), reason=r"kind must be 'cell' or 'field'")
    c.add("wrong kind", "second row", _split([[b, "cell"], [b, "smear"]]), reason=r"kind must be 'cell' or 'field'")


def _non_image_bytes(c: _Cases, rng: np.random.Generator) -> None:
    for n in (1, 2, 3, 7, 8, 16, 100, 1000, 10_000, 100_000):
        for k in range(3):
            c.add("non-image bytes", f"random {n} #{k}", _split([[_b64(rng.bytes(n)), "field"]]), reason=BAD_IMAGE)
    samples = {"text": b"hello, I am a text file\n", "pdf": b"%PDF-1.4\n%\xe2\xe3\n1 0 obj<<>>endobj\n",
               "zip": b"PK\x03\x04" + bytes(40), "gzip": b"\x1f\x8b\x08\x00" + bytes(40),
               "elf": b"\x7fELF\x02\x01\x01" + bytes(60), "html": b"<!doctype html><html></html>",
               "json": b'{"image": "x"}', "zeros": bytes(1000), "0xff": b"\xff" * 1000,
               "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
               "png magic only": b"\x89PNG\r\n\x1a\n", "jpeg magic only": b"\xff\xd8\xff",
               "gif magic only": b"GIF89a", "tiff magic only": b"II*\x00", "bmp magic only": b"BM"}
    for name, data in samples.items():
        for kind in ("cell", "field"):
            c.add("non-image bytes", f"{name} ({kind})", _split([[_b64(data), kind]]), reason=BAD_IMAGE)


def _truncated(c: _Cases, cell: bytes, field_png: bytes) -> None:
    from PIL import Image

    from activessf.imageio import decode_png

    jpeg = _pil(Image.fromarray(decode_png(cell)), "JPEG", quality=90)
    for fmt, data, kind in [("PNG cell", cell, "cell"), ("JPEG cell", jpeg, "cell"), ("PNG field", field_png, "field")]:
        for cut in np.unique(np.linspace(0.02, 0.995, 30) * len(data)).astype(int):
            c.add("truncated image", f"{fmt} at {cut}/{len(data)}", _split([[_b64(data[:cut]), kind]]),
                  reason=BAD_IMAGE)
    grey = decode_png(cell)[..., 0]
    for mode in ("L", "LA", "I;16"):
        img = Image.fromarray(grey).convert(mode)
        c.add("greyscale image", mode, _split([[_b64(_pil(img, "PNG")), "field"]]), reason=r"greyscale image")


def _over_limits(c: _Cases, cell: bytes, limits: FuzzLimits) -> None:
    from PIL import Image

    from activessf.imageio import encode_png

    side = int(limits.max_image_pixels ** 0.5) + 1
    for name, (w, h) in [("square", (side, side)), ("wide", (limits.max_image_pixels // 3 + 1, 3)),
                         ("tall", (2, limits.max_image_pixels // 2 + 1))]:
        png = encode_png(np.zeros((h, w, 3), np.uint8))
        for kind in ("cell", "field"):
            c.add("over the pixel limit", f"{name} {w}x{h} ({kind})", _split([[_b64(png), kind]]),
                  reason=rf"image 0: image is {w}x{h}.*register.max_image_pixels")
    for name, header in huge_headers().items():  # a header claiming billions of pixels: refused unread
        c.add("over the pixel limit", f"{name} header", _split([[_b64(header), "field"]]),
              reason=r"image 0: image is \d+x\d+ = [\d.]+ MP, above the limit")
    jpeg = _pil(Image.new("RGB", (side, side), (200, 100, 200)), "JPEG")
    c.add("over the pixel limit", f"JPEG {side}x{side}", _split([[_b64(cell), "cell"], [_b64(jpeg), "field"]]),
          reason=r"image 1: image is")
    b = _b64(cell)
    c.add("too many images", f"{limits.max_images + 1} rows", _split([[b, "cell"]] * (limits.max_images + 1)),
          reason=rf"{limits.max_images + 1} images in one request; the limit is {limits.max_images}")
    over = limits.max_image_bytes + 1
    c.add("huge base64", f"image of {over:,} bytes", _split([[_b64(bytes(over)), "cell"]]),
          reason=rf"image 0: {over:,} bytes is above the limit")
    big = limits.max_request_bytes + 1
    c.add("huge base64", f"body of {big:,} bytes", b'{"dataframe_split": {"data": [["' + b"A" * big + b'"]]}}',
          413, r"above the limit of [\d,]+ bytes \(register.max_request_bytes\)")
    c.add("huge base64", f"garbage of {big:,} bytes", bytes(big), 413, r"register.max_request_bytes")


def huge_headers() -> dict[str, bytes]:
    """Small PNG, BMP and GIF files whose headers claim 10^10, 9x10^8 and 4x10^9 pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(bytes(10))) + chunk(b"IEND", b""))
    bmp = b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, 30_000, 30_000, 1, 24, 0, 0,
                                                                    2835, 2835, 0, 0)
    gif = (b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00\x2c" + struct.pack("<HHHH", 0, 0, 65535, 65535)
           + b"\x00\x02\x02\x44\x01\x00\x3b")
    return {"PNG 100000x100000": png, "BMP 30000x30000": bmp, "GIF 65535x65535": gif}


def _wrong_content_type(c: _Cases, cell: bytes) -> None:
    valid = _split([[_b64(cell), "cell"]])
    for ct in ("text/plain", "application/xml", "multipart/form-data", "image/png",
               "application/octet-stream", "application/x-www-form-urlencoded"):
        c.add("wrong content type", ct, valid, 415, r"only supports the following content types", content_type=ct)
    for ct in ("application/json; charset=latin-1", "application/json; format=pandas-split",
               "multipart/form-data; boundary=x"):
        c.add("wrong content type", ct, valid, 415, r"only supports UTF-8|Unrecognized content type", content_type=ct)
    c.add("wrong content type", "no content type", valid, 415, r"no Content-Type", content_type=None)
    c.add("wrong content type", "csv garbage", b"\xff\x00\x01", 400, r"UTF-8", content_type="text/csv")
    c.add("wrong content type", "csv text image", b"image,kind\nabc,cell\n", 400, r"image 0: empty or not binary",
          content_type="text/csv")
    c.add("wrong content type", "parquet garbage", b"PAR1garbage", 400, r"Parquet",
          content_type="application/vnd.apache.parquet")


def fuzz(server: Server, cases: list[Case], concurrency: int = 8, timeout: float = 60) -> dict:
    """Send every case; returns the figures and ``failures``: cases not answered as expected."""
    answers, seconds = send_all(server.url, [c.request for c in cases], concurrency, timeout)
    failures = [{"case": a.name, "status": a.status, "expected": c.status, "answer": a.text[:500]}
                for c, a in zip(cases, answers)
                if a.status != c.status or not re.search(c.reason, a.text)]
    by_category: dict[str, Counter] = {}
    for c, a in zip(cases, answers):
        by_category.setdefault(c.category, Counter())[str(a.status)] += 1
    statuses = Counter(a.status for a in answers)
    slowest = max(answers, key=lambda a: a.seconds)
    return {"cases": len(cases), "concurrency": concurrency, "seconds": round(seconds, 2),
            "by_category": {k: {"cases": sum(v.values()), "statuses": dict(v)} for k, v in by_category.items()},
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "server_errors": sum(v for k, v in statuses.items() if k >= 500 or k == 0),
            "slowest": {"case": slowest.name, "seconds": round(slowest.seconds, 2)},
            "median_ms": round(statistics.median(a.seconds for a in answers) * 1000, 1),
            "failures": failures}


def still_right(server: Server, fields: list[bytes], cells: list[bytes]) -> bool:
    """A field and a cell asked after the fuzz get the reference answers of the load run's requests."""
    reqs = [Request("field0", request_body([fields[0]], ["field"])),
            Request("cell1", request_body([cells[1]], ["cell"]))]
    ref = reference(server.url, reqs)
    again, _ = send_all(server.url, reqs, 2)
    return all(a.status == 200 and same_predictions(predictions(a), ref[a.name]) for a in again)


# ------------------------------------------------------------------ the command


def synthetic_inputs(root: Path) -> tuple[list[bytes], list[bytes]]:
    """(fields, cells): 3 synthetic 512x384 fields and 16 cell crops of 64 px, made in ``root``."""
    from activessf.config import SynthConfig
    from activessf.data import synth

    synth.generate(SynthConfig(images=3, labelled=55, width=512, height=384, workers=1), root, progress=False)
    fields = [p.read_bytes() for p in sorted((root / "smears").glob("*.png"))]
    return fields, cell_crops(sorted((root / "labelled").rglob("*.png")))


def served_limits(model_uri: str) -> FuzzLimits:
    """The input limits the served model was logged with (its ``serving.json``)."""
    import mlflow

    local = mlflow.artifacts.download_artifacts(f"{model_uri}/artifacts/serving.json")
    limits = json.loads(Path(local).read_text())["limits"]
    return FuzzLimits(**{k: v for k, v in limits.items() if k in FuzzLimits.__dataclass_fields__})


def main(argv: Optional[list[str]] = None) -> int:
    import argparse
    import tempfile

    from common import write

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="activessf-classifier")
    ap.add_argument("--alias", default="champion")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args(argv)
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{repo / 'work' / 'mlflow.db'}")
    os.environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]
    uri = f"models:/{args.model}@{args.alias}"
    with tempfile.TemporaryDirectory() as tmp:
        fields, cells = synthetic_inputs(Path(tmp) / "synthetic")
        limits = served_limits(uri)
        started = time.perf_counter()
        with serve(uri, env, Path(tmp) / "server.log") as server:
            ready = time.perf_counter() - started
            loaded = load(server, fields, cells, args.requests, args.concurrency)
            fuzzed = fuzz(server, fuzz_cases(cells[0], fields[0], limits), args.concurrency)
            fuzzed["valid_request_answered_right_after"] = still_right(server, fields, cells)
    record = {"model": uri, "server_ready_seconds": round(ready, 1), "limits": limits.__dict__,
              "load": loaded, "fuzz": fuzzed}
    out = write("serving", record)
    print(json.dumps(record, indent=2))
    print(f"written to {out}")
    return 0 if not (loaded["server_errors"] or loaded["wrong_answers"] or fuzzed["failures"]) else 1


if __name__ == "__main__":
    sys.exit(main())
