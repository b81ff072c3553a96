"""`wan-engine serve` over real HTTP (httpx): the job API, bad requests naming the field, the body
bound, the API key, 8 concurrent jobs equal to the Engine's own videos, metrics."""
from __future__ import annotations

import concurrent.futures
import re

import httpx
import numpy as np
import pytest

from serve_harness import TINY_REQUEST, ServerProcess, wait_for_status
from wan_engine.engine import Engine, GenerationRequest
from wan_engine.pipelines.t2v import WanPipeline
from wan_engine.video import read_video, save_video

KEY = "test-key-123"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerProcess(tmp_path_factory.mktemp("serve"), "--api-key", KEY, "--max-queue", "16") as srv:
        yield srv


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
        yield c


def test_create_retrieve_download_list_delete(client):
    created = client.post("/v1/videos", json={"prompt": "a red kite", "seed": 5, "model": "wan-tiny", **TINY_REQUEST})
    assert created.status_code == 200, created.text
    job = created.json()
    assert job["object"] == "video" and job["model"] == "wan-tiny" and job["status"] in ("queued", "in_progress")
    assert job["seed"] == 5 and job["size"] == "32x32" and job["num_frames"] == 5 and job["seconds"] == "0.25"
    assert job["num_inference_steps"] == 2 and job["guidance_scale"] == 5.0 and job["solver"] == "unipc"
    assert job["cfg"] is True and job["sampling"] is None  # the defaults, resolved
    done = wait_for_status(client, job["id"])
    assert done["status"] == "completed" and done["progress"] == 100 and done["completed_at"] >= done["created_at"]
    assert set(done["timings"]) >= {"text_encoding", "denoising", "vae_decode"} and done["error"] is None
    content = client.get(f"/v1/videos/{job['id']}/content")
    assert content.status_code == 200 and content.headers["content-type"] == "video/mp4"
    assert content.content[4:8] == b"ftyp"
    ids = [j["id"] for j in client.get("/v1/videos", params={"limit": 100}).json()["data"]]
    assert job["id"] in ids
    deleted = client.delete(f"/v1/videos/{job['id']}")
    assert deleted.json() == {"id": job["id"], "object": "video.deleted", "deleted": True}
    assert client.get(f"/v1/videos/{job['id']}").status_code == 404
    assert client.get(f"/v1/videos/{job['id']}/content").status_code == 404
    assert client.delete(f"/v1/videos/{job['id']}").status_code == 404


def test_seconds_map_to_4n_plus_1_frames_in_a_form_body(client):
    form = {"prompt": "a kite", "seconds": "0.5", "size": "32x32", "num_inference_steps": "2", "seed": "3",
            "guidance_scale": "4.5", "model": "wan"}
    job = client.post("/v1/videos", data=form).json()
    assert job["num_frames"] == 0.5 * 16 + 1 and job["guidance_scale"] == 4.5 and job["seed"] == 3
    assert wait_for_status(client, job["id"])["status"] == "completed"


def test_content_is_404_until_the_job_completes(client):
    job = client.post("/v1/videos", json={"prompt": "slow", "size": "32x32", "num_frames": 5,
                                          "num_inference_steps": 60}).json()
    early = client.get(f"/v1/videos/{job['id']}/content")
    assert early.status_code == 404 and "status" in early.json()["error"]["message"]
    assert wait_for_status(client, job["id"])["status"] == "completed"
    assert client.get(f"/v1/videos/{job['id']}/content").status_code == 200


def test_list_pages_with_after_limit_and_order(client):
    ids = [client.post("/v1/videos", json={"prompt": f"p{i}", "seed": i, **TINY_REQUEST}).json()["id"]
           for i in range(3)]
    for job_id in ids:
        wait_for_status(client, job_id)
    first = client.get("/v1/videos", params={"limit": 2, "order": "desc"}).json()
    assert [j["id"] for j in first["data"]] == ids[::-1][:2] and first["has_more"] is True
    second = client.get("/v1/videos", params={"limit": 2, "order": "desc", "after": first["last_id"]}).json()
    assert second["data"][0]["id"] == ids[0]
    ascending = client.get("/v1/videos", params={"limit": 100, "order": "asc"}).json()["data"]
    positions = [[j["id"] for j in ascending].index(i) for i in ids]
    assert positions == sorted(positions)
    for params, field in [({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"order": "up"}, "order"),
                          ({"after": "video_unknown"}, "after")]:
        bad = client.get("/v1/videos", params=params)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == field


@pytest.mark.parametrize("body,field,match", [
    ({"prompt": "x", "colour": "red"}, "colour", "unknown field 'colour'"),
    ({"prompt": "x", "size": "830x480"}, "size", "multiples of 16"),
    ({"prompt": "x", "size": "4096x4096"}, "size", "at most 1920"),
    ({"prompt": "x", "size": "big"}, "size", "832x480"),
    ({"prompt": "x", "num_frames": 6}, "num_frames", "4n\\+1"),
    ({"prompt": "x", "num_frames": 1001}, "num_frames", "at most 241"),
    ({"prompt": "x", "seconds": "0.3"}, "seconds", "multiple of 4"),
    ({"prompt": "x", "num_inference_steps": 0}, "num_inference_steps", ">= 1"),
    ({"prompt": "x", "num_inference_steps": 1000}, "num_inference_steps", "at most 200"),
    ({"prompt": "x", "num_inference_steps": "many"}, "num_inference_steps", "must be an integer"),
    ({"prompt": "x", "guidance_scale": -2}, "guidance_scale", ">= 0"),
    ({"prompt": ""}, "prompt", "non-empty"),
    ({"prompt": "   "}, "prompt", "non-empty"),
    ({"size": "32x32"}, "prompt", "required"),
    ({"prompt": "x" * 3000}, "prompt", "at most 2000 characters"),
    ({"prompt": "x", "solver": "ddim"}, "solver", "unipc"),
    ({"prompt": "x", "cache": "nocache:1"}, "cache", "teacache"),
    ({"prompt": "x", "cfg": "maybe"}, "cfg", "true or false"),
    ({"prompt": "x", "cfg": 0}, "cfg", "true or false"),
    ({"prompt": "x", "sampling": "turbo-2step"}, "sampling", "distill-4step"),
    ({"prompt": "x", "sampling": "distill-4step", "num_inference_steps": 10}, "num_inference_steps", "must be 4"),
    ({"prompt": "x", "image": "/etc/passwd"}, "image", "unknown field"),  # clients never name server files
])
def test_bad_fields_get_422_naming_the_field(client, body, field, match):
    response = client.post("/v1/videos", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == field and field in error["message"] and re.search(match, error["message"]), error


@pytest.mark.parametrize("value", ["maybe", "1", "no", "", "False"])
def test_form_cfg_accepts_only_true_or_false(client, value):
    response = client.post("/v1/videos", data={"prompt": "x", "cfg": value})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == "cfg" and "true or false" in error["message"], error


def test_cfg_and_sampling_run_and_are_reported(client, tmp_path):
    """`sampling` (JSON) and `cfg` (a form string) reach the run: the served videos equal the
    Engine's for the same fields, which differ from the default CFG video."""
    base = {"prompt": "a blue kite", "seed": 21, "size": "32x32", "num_frames": 5}
    distill = client.post("/v1/videos", json={**base, "sampling": "distill-4step"})
    no_cfg = client.post("/v1/videos", data={**{k: str(v) for k, v in base.items()}, "num_inference_steps": "2",
                                             "cfg": "false"})
    assert distill.status_code == no_cfg.status_code == 200, (distill.text, no_cfg.text)
    engine = Engine(WanPipeline.from_pretrained("tiny", device="cpu"))
    fields = dict(size=(32, 32), num_frames=5, seed=21)
    expected = {
        "distill": dict(sampling="distill-4step", cfg=False, num_inference_steps=4, shift=5.0),
        "no_cfg": dict(sampling=None, cfg=False, num_inference_steps=2),
    }
    for name, response in (("distill", distill), ("no_cfg", no_cfg)):
        job = wait_for_status(client, response.json()["id"])
        assert job["status"] == "completed", job
        for record in (response.json(), job):  # at creation and once done
            assert {k: record[k] for k in expected[name]} == expected[name], record
        local = engine.generate(GenerationRequest(base["prompt"], **fields, **{k: v for k, v in expected[name].items()
                                                                              if k != "shift"})).frames
        served = tmp_path / f"{name}.mp4"
        served.write_bytes(client.get(f"/v1/videos/{job['id']}/content").content)
        np.testing.assert_array_equal(read_video(served), read_video(save_video(local, tmp_path / f"{name}-local.mp4")))
    with_cfg = engine.generate(GenerationRequest(base["prompt"], **fields, num_inference_steps=2)).frames
    assert not np.array_equal(with_cfg, local)  # cfg=False changed the video: the field was not ignored


def test_malformed_json_oversized_body_and_wrong_type_are_refused(client):
    malformed = client.post("/v1/videos", content=b'{"prompt": "x",', headers={"content-type": "application/json"})
    assert malformed.status_code == 400 and "not valid JSON" in malformed.json()["error"]["message"]
    huge = client.post("/v1/videos", json={"prompt": "x" * (70 * 1024)})
    assert huge.status_code == 413 and "exceeds 65536 bytes" in huge.json()["error"]["message"]
    chunked = client.post("/v1/videos", content=iter([b'{"prompt": "', b"x" * (70 * 1024), b'"}']),
                          headers={"content-type": "application/json"})
    assert chunked.status_code == 413
    text = client.post("/v1/videos", content=b"prompt", headers={"content-type": "text/plain"})
    assert text.status_code == 415


def test_an_image_upload_to_a_text_to_video_server_is_refused_naming_the_field(client):
    files = {"input_reference": ("f.png", b"\x89PNG\r\n\x1a\n", "image/png")}
    refused = client.post("/v1/videos", data={"prompt": "x"}, files=files)
    assert refused.status_code == 422 and refused.json()["error"]["param"] == "input_reference"
    assert "text-to-video model" in refused.json()["error"]["message"]
    three = [("input_reference", ("a.png", b"a")), ("last_reference", ("b.png", b"b")), ("input_reference", ("c", b"c"))]
    too_many = client.post("/v1/videos", data={"prompt": "x"}, files=three)
    assert too_many.status_code == 400 and "Maximum number of files is 2" in too_many.json()["error"]["message"]


def test_a_missing_or_wrong_key_gets_401_on_every_v1_route(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as c:
            for method, path in [("POST", "/v1/videos"), ("GET", "/v1/videos"), ("GET", "/v1/videos/x"),
                                 ("GET", "/v1/videos/x/content"), ("DELETE", "/v1/videos/x")]:
                response = c.request(method, path, json={"prompt": "x"} if method == "POST" else None)
                assert response.status_code == 401, (headers, method, path)
                assert response.json()["error"]["code"] == "invalid_api_key"
            assert c.get("/health").status_code == 200  # liveness needs no key


def test_eight_concurrent_jobs_complete_and_equal_the_engines_videos(client, tmp_path):
    requests = [{"prompt": f"kite number {i}", "seed": 100 + i, "size": "32x32", "num_frames": 5 + 4 * (i % 2),
                 "num_inference_steps": 2 + i % 2} for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        created = list(pool.map(lambda body: client.post("/v1/videos", json=body), requests))
    assert all(r.status_code == 200 for r in created), [r.text for r in created]
    jobs = [wait_for_status(client, r.json()["id"]) for r in created]
    assert [j["status"] for j in jobs] == ["completed"] * 8
    engine = Engine(WanPipeline.from_pretrained("tiny", device="cpu"))
    for body, job in zip(requests, jobs):
        served = tmp_path / f"{job['id']}.mp4"
        served.write_bytes(client.get(f"/v1/videos/{job['id']}/content").content)
        result = engine.generate(GenerationRequest(body["prompt"], size=(32, 32), num_frames=body["num_frames"],
                                                   num_inference_steps=body["num_inference_steps"], seed=body["seed"]))
        local = save_video(result.frames, tmp_path / f"local-{job['id']}.mp4")
        np.testing.assert_array_equal(read_video(served), read_video(local))
        assert served.read_bytes() == local.read_bytes()  # the encoder is deterministic too


def test_metrics_are_prometheus_text(client, server):
    client.post("/v1/videos", json={"prompt": "m", "seed": 1, **TINY_REQUEST})
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("wan_queue_depth", 'wan_jobs{status="completed"}', "wan_step_seconds_bucket",
                 "wan_generation_seconds_count", "wan_gpu_memory_allocated_bytes", "process_resident_memory_bytes"):
        assert name in text, name
    completed = float(re.search(r'^wan_jobs\{status="completed"\} (\S+)$', text, re.M).group(1))
    assert completed >= 1
