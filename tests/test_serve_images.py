"""`wan-engine serve` with image-to-video models: the first (and last) frame uploaded as the
multipart file fields `input_reference` and `last_reference`, checked at submit like the CLI's
--image/--last-image (a 422 naming the field), stored with the job until it finishes, and the
video equal to the Engine's own from the same image file."""
from __future__ import annotations

import io
import re
import warnings

import httpx
import numpy as np
import pytest

from serve_harness import ServerProcess, wait_for_status
from test_i2v import PROMPT, rgb
from wan_engine.engine import Engine, GenerationRequest
from wan_engine.pipelines.t2v import WanPipeline
from wan_engine.video import read_video, save_video

FORM = {"prompt": PROMPT, "size": "48x48", "num_frames": "5", "num_inference_steps": "2"}


def png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _inputs(server: ServerProcess) -> list[str]:
    return sorted(p.name for p in (server.output_dir / "inputs").iterdir())


def _engine_video(model: str, tmp_path, seed: int, **images) -> bytes:
    paths = {}
    for field, array in images.items():
        paths[field] = tmp_path / f"{field}.png"
        paths[field].write_bytes(png(array))
    engine = Engine(WanPipeline.from_pretrained(model, device="cpu"))
    try:
        result = engine.generate(GenerationRequest(PROMPT, size=(48, 48), num_frames=5, num_inference_steps=2,
                                                   seed=seed, **{k: str(v) for k, v in paths.items()}))
    finally:
        engine.close()
    return save_video(result.frames, tmp_path / f"local-{model}.mp4").read_bytes()


def read_video_bytes(data: bytes, tmp_path) -> np.ndarray:
    path = tmp_path / "served.mp4"
    path.write_bytes(data)
    return read_video(path)


@pytest.fixture(scope="module")
def i2v(tmp_path_factory):
    with ServerProcess(tmp_path_factory.mktemp("serve-i2v"), "--model", "tiny-i2v", "--no-warmup") as srv:
        yield srv


@pytest.fixture
def client(i2v):
    with httpx.Client(base_url=i2v.url, timeout=60) as c:
        yield c


def test_an_uploaded_first_frame_gives_the_engines_video_and_is_removed_after(client, i2v, tmp_path):
    first = rgb(64, 48, 1)  # 48 wide, 64 high
    created = client.post("/v1/videos", data={**FORM, "seed": "7"},
                          files={"input_reference": ("first.png", png(first), "image/png")})
    assert created.status_code == 200, created.text
    job = created.json()
    assert job["input_reference"] == "48x64" and job["last_reference"] is None
    assert job["size"] == "32x48"  # what the client receives: the 48x48 area at the image's aspect (official rule)
    done = wait_for_status(client, job["id"])
    assert done["status"] == "completed", done
    served = client.get(f"/v1/videos/{job['id']}/content").content
    assert served == _engine_video("tiny-i2v", tmp_path, 7, image=first)
    assert read_video_bytes(served, tmp_path).shape == (5, 48, 32, 3)
    assert _inputs(i2v) == []  # read when the job ran, deleted when it finished


@pytest.mark.parametrize("files, data, field, match", [
    ({}, {}, "input_reference", "input_reference is required.*multipart/form-data file field"),
    ({"input_reference": ("x.png", b"\x89PNG\r\n\x1a\n not really", "image/png")}, {}, "input_reference",
     "the uploaded file is not a readable image"),
    ({"input_reference": ("x.png", png(rgb(10, 10)), "image/png")}, {}, "input_reference", "10x10 is too small"),
    ({"input_reference": ("a.png", png(rgb(48, 48)), "image/png"),
      "last_reference": ("b.png", png(rgb(48, 48)), "image/png")}, {}, "last_reference",
     "an i2v model takes the first frame only"),
    ({"mask": ("m.png", png(rgb(48, 48)), "image/png")}, {}, "mask", "the file fields are input_reference"),
    ({}, {"input_reference": "/etc/passwd"}, "input_reference", "must be an uploaded image file"),
], ids=["missing", "corrupt", "too-small", "last-on-i2v", "other-file", "a-path-as-text"])
def test_bad_images_get_422_naming_the_field_and_leave_nothing_behind(client, i2v, files, data, field, match):
    before = client.get("/v1/videos", params={"limit": 100}).json()["data"]
    if files or data:
        response = client.post("/v1/videos", data={**FORM, **data}, files=files or None)
    else:  # a JSON body cannot carry an image
        response = client.post("/v1/videos", json={"prompt": PROMPT})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == field and re.search(match, error["message"]), error
    assert str(i2v.output_dir) not in error["message"]  # no server path in what the client reads
    assert _inputs(i2v) == [] and client.get("/v1/videos", params={"limit": 100}).json()["data"] == before


def test_an_flf2v_job_from_two_uploads(tmp_path):
    first, last = rgb(48, 48, 2), rgb(48, 48, 3)
    with ServerProcess(tmp_path, "--model", "tiny-flf2v", "--no-warmup") as srv, \
            httpx.Client(base_url=srv.url, timeout=60) as client:
        missing = client.post("/v1/videos", data=FORM, files={"input_reference": ("a.png", png(first), "image/png")})
        assert missing.status_code == 422 and missing.json()["error"]["param"] == "last_reference"
        job = client.post("/v1/videos", data={**FORM, "seed": "9"},
                          files={"input_reference": ("a.png", png(first), "image/png"),
                                 "last_reference": ("b.png", png(last), "image/png")}).json()
        assert (job["input_reference"], job["last_reference"]) == ("48x48", "48x48")
        assert wait_for_status(client, job["id"])["status"] == "completed"
        served = client.get(f"/v1/videos/{job['id']}/content").content
    assert served == _engine_video("tiny-flf2v", tmp_path, 9, image=first, last_image=last)


def test_the_openai_client_uploads_the_first_frame(i2v, tmp_path):
    openai = pytest.importorskip("openai")
    path = tmp_path / "first.png"
    path.write_bytes(png(rgb(48, 48, 4)))
    client = openai.OpenAI(base_url=f"{i2v.url}/v1", api_key="unused", max_retries=0)
    with warnings.catch_warnings(), path.open("rb") as image:
        warnings.simplefilter("ignore", DeprecationWarning)  # the Sora API's own deprecation notice
        video = client.videos.create(prompt=PROMPT, size="48x48", seconds="0.25", input_reference=image,
                                     extra_body={"num_inference_steps": 2, "seed": 4})
        done = client.videos.poll(video.id, poll_interval_ms=50)
    assert done.status == "completed", done
    assert done.model_extra["input_reference"] == "48x48" and done.model_extra["num_frames"] == 5
