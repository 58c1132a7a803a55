"""A folder of images (the 3D tasks' posed_images_new/{scene_id}/) as the video of an item: frame k of the folder,
in numeric file-name order, at t = k seconds (pipelines/media.py), sampled and encoded as a video's frames are."""
import json
from fractions import Fraction
from functools import partial

import av
import numpy as np
import pytest

from featurestore import FeatureStore
from jobs.cli import main
from pipelines.media import ItemError, frame_files, read_audio, read_frames, uniform_frames

# Solid colours, each frame with one marker pixel near its top left corner (a flipped or turned frame would move it).
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (17, 99, 201)]
NAMES = ["0", "5", "10", "15", "20"]  # by name the order would be 0, 10, 15, 20, 5


def picture(k: int, height: int = 24, width: int = 32) -> np.ndarray:
    image = np.empty((height, width, 3), np.uint8)
    image[:] = COLOURS[k]
    image[2, 3] = (k * 40, 255 - k * 40, 7)
    return image


def write_image(path, image: np.ndarray) -> None:
    """A PNG (lossless: rgb24) or a JPEG, written by PyAV."""
    png = str(path).endswith(".png")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("png" if png else "mjpeg")
        stream.width, stream.height = image.shape[1], image.shape[0]
        stream.pix_fmt = "rgb24" if png else "yuvj444p"
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_video(path, images: list[np.ndarray]) -> None:
    """The same pictures as a lossless video (PNG in MOV) at one frame per second: frame k at t = k s."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = images[0].shape[1], images[0].shape[0], "rgb24"
        stream.time_base = Fraction(1, 1)
        for k, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = k, Fraction(1, 1)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """root/scene0 (5 PNG frames, plus a file that is no image), root/scene0.mov (the same frames as a video) and
    the bad folders: empty, no images, one unreadable .jpg among good frames."""
    root = tmp_path_factory.mktemp("posed_images")
    (root / "scene0").mkdir()
    for k, name in enumerate(NAMES):
        write_image(root / "scene0" / f"{name}.png", picture(k))
    (root / "scene0" / "poses.txt").write_text("not a frame\n")
    write_video(root / "scene0.mov", [picture(k) for k in range(5)])
    (root / "empty").mkdir()
    (root / "no_images").mkdir()
    (root / "no_images" / "readme.txt").write_text("no frames here\n")
    (root / "broken").mkdir()
    write_image(root / "broken" / "0.png", picture(0))
    (root / "broken" / "1.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 600, np.uint8).tobytes())
    write_image(root / "broken" / "2.png", picture(2))
    return root


def test_frames_are_sorted_by_number_when_every_name_is_one_else_by_name(tmp_path):
    for folder, names, order in (("numeric", ["100.jpg", "20.jpg", "0.jpg", "40.png"], [0, 20, 40, 100]),
                                 ("named", ["b2.png", "a.jpg", "b10.png"], ["a", "b10", "b2"])):
        (tmp_path / folder).mkdir()
        for name in names + ["notes.txt", ".hidden.jpg"]:
            (tmp_path / folder / name).write_bytes(b"x")
        stems = [p.rsplit("/", 1)[1].split(".")[0] for p in frame_files(str(tmp_path / folder))]
        assert stems == [str(o) for o in order]


def test_decoded_frames_are_the_image_pixels_at_one_frame_per_second(scenes):
    frames, t = read_frames(str(scenes / "scene0"), partial(uniform_frames, n=5), None, folders=True)
    assert t.tolist() == [0, 1, 2, 3, 4]
    assert frames.dtype == np.uint8 and all(np.array_equal(frames[k], picture(k)) for k in range(5))
    frames, t = read_frames(str(scenes / "scene0"), partial(uniform_frames, n=3), None, folders=True)
    assert t.tolist() == [0, 2, 4]
    assert all(np.array_equal(f, picture(k)) for f, k in zip(frames, [0, 2, 4]))


@pytest.mark.parametrize("n", [5, 3, 8])
def test_a_frame_folder_gives_the_encoder_inputs_of_the_same_frames_as_a_video(scenes, n):
    """Resized as the encoder wants (swscale bicubic), sampled uniformly: the same arrays and times as the video of
    those frames at 1 fps, so the same tokens (more frames than the folder holds: repeats, as a video's)."""
    folder = read_frames(str(scenes / "scene0"), partial(uniform_frames, n=n), 16, folders=True)
    video = read_frames(str(scenes / "scene0.mov"), partial(uniform_frames, n=n), 16)
    assert folder[0].shape == (n, 16, 16, 3)
    assert np.array_equal(folder[0], video[0]) and np.array_equal(folder[1], video[1])


def test_a_frame_folder_has_no_audio_and_no_frame_rate(scenes):
    with pytest.raises(ItemError, match="a frame folder has no audio"):
        read_audio(str(scenes / "scene0"))
    with pytest.raises(ItemError, match="only the video modality reads one"):
        read_frames(str(scenes / "scene0"), partial(uniform_frames, n=5), None)


def test_materialize_a_manifest_of_frame_folders(scenes, tmp_path, ray_local, resources):
    manifest = tmp_path / "manifest.jsonl"
    ids = ["scene0", "scene0_video", "empty", "no_images", "broken"]
    paths = ["scene0", "scene0.mov", "empty", "no_images", "broken"]
    manifest.write_text("".join(json.dumps({"id": i, "video": str(scenes / p)}) + "\n" for i, p in zip(ids, paths)))
    store = tmp_path / "store"
    summaries = {}
    for frames, modalities in ((5, "video,audio,hfr"), (3, "video")):
        summaries[frames] = tmp_path / f"summary{frames}.json"
        code = main(["materialize", "--input", str(manifest), "--store", str(store), "--modalities", modalities,
                     "--frames", str(frames), "--part-items", "2", "--summary-json", str(summaries[frames])])
        assert code == (1 if frames == 5 else 0)  # a frame folder stores no audio: nothing stored for it
        summaries[frames] = json.loads(summaries[frames].read_text())

    first = summaries[5]
    assert first["counts"]["video"] == {"ok": 2, "failed": 3, "skipped": 0}
    failures = first["failures"]["video"]
    assert failures["empty"] == f"video of 'empty' ({scenes / 'empty'}): an empty frame folder"
    assert failures["no_images"].startswith(f"video of 'no_images' ({scenes / 'no_images'}): a folder with no "
                                            "image files (jpg, jpeg, png)")
    assert failures["broken"].startswith(f"video of 'broken' ({scenes / 'broken'}): image "
                                         f"{scenes / 'broken' / '1.jpg'} cannot be read: ")
    assert "Invalid data" in failures["broken"]
    # audio and hfr: every frame folder fails with the reason; the video file has no audio track either
    assert first["counts"]["audio"] == {"ok": 0, "failed": 5, "skipped": 0}
    assert first["failures"]["audio"]["scene0"].endswith("a frame folder has no audio")
    assert first["failures"]["audio"]["scene0_video"].endswith("no audio track")
    assert first["counts"]["hfr"] == {"ok": 1, "failed": 4, "skipped": 0}
    assert "only the video modality reads one" in first["failures"]["hfr"]["scene0"]
    assert summaries[3]["counts"]["video"] == {"ok": 2, "failed": 3, "skipped": 0}

    for frames, times in ((5, [0, 1, 2, 3, 4]), (3, [0, 2, 4])):
        version = FeatureStore(str(store)).version("video", summaries[frames]["versions"]["video"])
        folder, video = version.get("scene0"), version.get("scene0_video")
        assert folder.t_start.tolist() == times and folder.t_end.tolist() == times
        assert video.t_start.tolist() == times
        assert np.array_equal(folder.tokens, video.tokens)  # the same frames, the same tokens
