"""The served model under load and under garbage: the session's `mlflow models serve` of the demo job's
model (the ``served`` fixture) answers 500 concurrent requests without an error, a wrong answer or memory
growth, and 300+ malformed requests with a 4xx and a reason each. The requests and the figures are
``benchmarks/bench_serving.py``'s (which runs the same on a model of your registry); the figures are
printed (``pytest -rP`` shows them)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_serving import FuzzLimits, cell_crops, fuzz, fuzz_cases, load, still_right  # noqa: E402

pytestmark = pytest.mark.own_ray  # the demo job's model, made on the session's token-auth head


@pytest.fixture(scope="module")
def inputs(served) -> tuple[list[bytes], list[bytes]]:
    """(fields, cells): the demo's 512x384 smear fields and 16 of its labelled cells at 64 px, as PNG bytes."""
    data = served["data"]
    fields = [p.read_bytes() for p in sorted((data / "smears").glob("*.png"))]
    return fields, cell_crops(sorted((data / "labelled").rglob("*.png")))


def test_500_concurrent_requests_get_right_answers_without_errors_or_memory_growth(served, inputs):
    server = served["server"]
    figures = load(server, *inputs, n=500, concurrency=8)
    print("load:", json.dumps(figures))
    assert figures["mix"]["field_512x384"] >= 100 and figures["mix"]["cell_64px"] >= 300
    assert figures["statuses"] == {"200": 500}, json.dumps(figures) + server.log_tail()
    assert figures["wrong_answers"] == 0, figures["wrong"]  # each answer equals its request's answer alone
    rss = figures["rss_mib"]
    assert rss["end"] <= 1.10 * rss["after_warmup"], rss


def test_malformed_requests_get_4xx_with_the_reason_and_the_server_answers_right_after(served, inputs):
    fields, cells = inputs
    r = served["cfg"].register  # the limits the served model was logged with
    cases = fuzz_cases(cells[0], fields[0], FuzzLimits(r.max_image_pixels, r.max_image_bytes, r.max_images,
                                                       r.max_request_bytes))
    assert len(cases) >= 300
    figures = fuzz(served["server"], cases, concurrency=8, timeout=60)
    print("fuzz:", json.dumps({k: v for k, v in figures.items() if k != "failures"}))
    assert not figures["failures"], json.dumps(figures["failures"][:10], indent=1)  # status and reason per case
    assert set(figures["statuses"]) == {"400", "413", "415"}
    assert figures["slowest"]["seconds"] < 10  # a huge body is refused before it is parsed; nothing hangs
    assert still_right(served["server"], fields, cells)
