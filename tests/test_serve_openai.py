"""The official `openai` package, unchanged, against `wan-engine serve`: create (multipart form,
Wan parameters through extra_body), create_and_poll, retrieve, list, download_content, delete."""
from __future__ import annotations

import warnings

import pytest

openai = pytest.importorskip("openai")

from serve_harness import ServerProcess  # noqa: E402
from wan_engine.video import read_video  # noqa: E402

KEY = "sk-local-test"
WAN = {"num_inference_steps": 2, "seed": 9, "guidance_scale": 4.0, "solver": "euler"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with ServerProcess(tmp_path_factory.mktemp("openai"), "--api-key", KEY) as server:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the Sora API's own deprecation notice
            yield openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)


def test_create_then_poll_retrieve_download_list_delete(client, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        video = client.videos.create(prompt="a red kite", model="wan-tiny", size="32x32", seconds="0.25",
                                     extra_body=WAN)
        assert video.status in ("queued", "in_progress") and video.model == "wan-tiny"
        done = client.videos.poll(video.id, poll_interval_ms=50)
        assert done.status == "completed" and done.progress == 100 and done.size == "32x32"
        extra = done.model_extra
        assert extra["num_frames"] == 5 and extra["seed"] == 9 and extra["solver"] == "euler"
        assert extra["guidance_scale"] == 4.0 and extra["num_inference_steps"] == 2
        assert client.videos.retrieve(video.id).status == "completed"
        content = client.videos.download_content(video.id)
        path = tmp_path / "kite.mp4"
        content.write_to_file(path)
        assert read_video(path).shape == (5, 32, 32, 3)
        listed = [v.id for v in client.videos.list(limit=10, order="desc")]
        assert video.id in listed
        deleted = client.videos.delete(video.id)
        assert deleted.deleted and deleted.id == video.id and deleted.object == "video.deleted"
        with pytest.raises(openai.NotFoundError):
            client.videos.retrieve(video.id)


def test_create_and_poll_and_auto_pagination(client):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        done = [client.videos.create_and_poll(prompt=f"kite {i}", size="32x32", seconds="0.25",
                                              poll_interval_ms=50, extra_body={"num_inference_steps": 2, "seed": i})
                for i in range(3)]
        assert [v.status for v in done] == ["completed"] * 3
        assert len({v.id for v in done}) == 3
        everything = [v.id for v in client.videos.list(limit=1)]  # follows `after` page by page
        assert {v.id for v in done} <= set(everything)


def test_errors_reach_the_client_typed(client):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(openai.UnprocessableEntityError, match="num_inference_steps"):
            client.videos.create(prompt="x", size="32x32", extra_body={"num_inference_steps": 0})
        with pytest.raises(openai.UnprocessableEntityError, match="unknown field 'flavour'"):
            client.videos.create(prompt="x", extra_body={"flavour": "vanilla"})
        bad_key = openai.OpenAI(base_url=str(client.base_url), api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad_key.videos.list()


def test_cfg_and_sampling_through_extra_body(client):
    """The `openai` package sends extra_body as form fields: a Python False arrives as the text
    the server's strict cfg parser accepts."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        no_cfg = client.videos.create_and_poll(prompt="a kite", size="32x32", seconds="0.25", poll_interval_ms=50,
                                               extra_body={"num_inference_steps": 2, "seed": 3, "cfg": False})
        distill = client.videos.create_and_poll(prompt="a kite", size="32x32", seconds="0.25", poll_interval_ms=50,
                                                extra_body={"seed": 3, "sampling": "distill-4step"})
        assert no_cfg.status == distill.status == "completed"
        assert no_cfg.model_extra["cfg"] is False and no_cfg.model_extra["sampling"] is None
        assert distill.model_extra["sampling"] == "distill-4step" and distill.model_extra["cfg"] is False
        assert distill.model_extra["num_inference_steps"] == 4
        with pytest.raises(openai.UnprocessableEntityError, match="cfg must be true or false"):
            client.videos.create(prompt="x", size="32x32", extra_body={"cfg": "maybe"})
