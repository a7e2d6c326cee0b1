"""The headless farm on two real ComfyUI servers: a 4-job manifest over the session's user
install and a second one started the same way, with the embedded model."""

from __future__ import annotations

import json

import numpy as np
import pbe_host
import pytest
from PIL import Image

SIZE = 64


@pytest.fixture(scope="module")
def second_install(tmp_path_factory):
    server = pbe_host.start_user_install(tmp_path_factory.mktemp("farm_second_install"))
    yield server
    server.stop()


def test_a_manifest_over_two_servers_makes_every_output_once(
    user_install, second_install, tmp_path
):
    from exemplar_core import headless
    from exemplar_core.batch.results import read_records

    rng = np.random.default_rng(0)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[16:44, 20:48] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(tmp_path / "ex.png")
    lines = []
    for i in range(4):
        source = (rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8)
        Image.fromarray(source).save(tmp_path / f"source{i}.png")
        job = {"id": f"job{i}", "source": f"source{i}.png", "mask": "mask.png", "seed": i}
        lines.append(json.dumps({**job, "exemplar": "ex.png"}))
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    servers = [user_install.url, second_install.url]
    args = ["--manifest", str(manifest), "--out", str(out), "--steps", "2", "--quiet"]
    code = headless.main([*args, "--server", servers[0], "--server", servers[1]])
    log = user_install.log()[-2000:] + second_install.log()[-2000:]
    assert code == headless.EXIT_OK, log
    made = sorted(path.name for path in out.glob("*.png"))
    assert made == [f"job{i}.png" for i in range(4)]
    for name in made:
        with Image.open(out / name) as image:
            assert image.size == (SIZE, SIZE)
    records = read_records(out)
    assert sorted(record["id"] for record in records) == [f"job{i}" for i in range(4)]
    assert all(record["error"] is None for record in records)
    assert {record["worker"] for record in records} == set(servers)
    assert [record["seed"] for record in sorted(records, key=lambda r: r["id"])] == [0, 1, 2, 3]
