"""The embedding pipeline: a tiny ONNX encoder on generated images, corrupt files and resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from pamela_lite import embed, tiny_encoder
from pamela_lite.cli import run
from pamela_lite.data import read_embeddings
from pamela_lite.errors import InputError
from pamela_lite.encoder import Encoder, Preprocess, embed_images, list_images, load_pixels, to_tensor


def _images(folder, n, start=0, size=(40, 30)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    for k in range(start, start + n):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"img{k:03d}.png")
    return folder


@pytest.fixture
def encoder_path(tmp_path):
    return tiny_encoder.write(tmp_path / "enc.onnx", size=32, dim=16)


def test_folder_of_images_becomes_an_embeddings_file(tmp_path, encoder_path):
    images = _images(tmp_path / "imgs", 5)
    report = embed_images(Encoder(encoder_path), list_images(images), tmp_path / "e.parquet", batch_size=2)
    emb = read_embeddings(tmp_path / "e.parquet")  # the loader the scorer uses accepts it
    assert report.embedded == 5 and emb.matrix.shape == (5, 16)
    assert sorted(emb.ids.to_list()) == [f"img{k:03d}.png" for k in range(5)]
    np.testing.assert_allclose(np.linalg.norm(emb.matrix, axis=1), 1.0, rtol=1e-5)  # CLIP default: L2


def test_corrupt_and_non_image_files_are_reported_not_fatal(tmp_path, encoder_path):
    images = _images(tmp_path / "imgs", 3)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (images / "notes.txt").write_text("hello")
    out = tmp_path / "e.parquet"
    code = run(embed.main, ["--encoder", str(encoder_path), "--images", str(images), "--out", str(out), "--quiet"])
    assert code == 0
    assert read_embeddings(out).matrix.shape[0] == 3
    skipped = pl.read_csv(tmp_path / "e.parquet.skipped.csv")
    assert sorted(p.rsplit("/", 1)[1] for p in skipped["path"]) == ["broken.png", "notes.txt"]
    reasons = dict(zip((p.rsplit("/", 1)[1] for p in skipped["path"]), skipped["reason"]))
    assert reasons["notes.txt"] == "not an image (or a format Pillow cannot read)"  # not "UnidentifiedImageError"


def test_a_rerun_that_skips_nothing_removes_the_last_runs_skipped_report(tmp_path, encoder_path):
    # the report of the run before stayed, listing a file since fixed and embedded
    images = _images(tmp_path / "imgs", 2)
    (images / "broken.png").write_bytes(b"not an image")
    args = ["--encoder", str(encoder_path), "--images", str(images), "--out", str(tmp_path / "e.parquet"), "--quiet"]
    assert run(embed.main, args) == 0 and (tmp_path / "e.parquet.skipped.csv").exists()
    _images(tmp_path / "fixed", 1)
    (tmp_path / "fixed" / "img000.png").replace(images / "broken.png")
    assert run(embed.main, args) == 0
    assert not (tmp_path / "e.parquet.skipped.csv").exists() and read_embeddings(tmp_path / "e.parquet").matrix.shape[0] == 3


def test_a_list_naming_an_image_twice_gives_one_id(tmp_path, encoder_path):
    # "img000.png" twice, or as "./img000.png", wrote two rows of one id, which every reader then refused;
    # a "# comment" line was read as a path
    images = _images(tmp_path / "imgs", 2)
    (images / "list.txt").write_text("# my picks\nimg000.png\n./img000.png\nimg000.png\nimg001.png\n")
    assert [i for _, i in list_images(images / "list.txt")] == ["img000.png", "img001.png"]
    embed_images(Encoder(encoder_path), list_images(images / "list.txt"), tmp_path / "e.parquet", batch_size=2)
    assert read_embeddings(tmp_path / "e.parquet").matrix.shape[0] == 2


def test_hidden_files_and_folders_are_left_out(tmp_path):
    # thumbnails and notebook checkpoints in hidden folders were embedded as images of their own
    images = _images(tmp_path / "imgs", 2)
    _images(images / ".thumbnails", 1)
    (images / ".cover.png").write_bytes((images / "img000.png").read_bytes())
    assert [i for _, i in list_images(images)] == ["img000.png", "img001.png"]


def test_linked_subfolders_are_followed_once(tmp_path):
    # a linked subfolder was silently skipped; a link back up the tree must not loop
    images = _images(tmp_path / "imgs", 1)
    _images(tmp_path / "elsewhere", 1, start=5)
    (images / "more").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (images / "loop").symlink_to(images, target_is_directory=True)
    assert [i for _, i in list_images(images)] == ["img000.png", "more/img005.png"]


def test_a_linked_folder_is_listed_under_its_real_name_whatever_the_listing_order(tmp_path):
    # links that sort before and after their folders: any one listing order puts a link first somewhere
    images = tmp_path / "imgs"
    _images(images / "b_real", 1)
    _images(images / "y_real", 1, start=1)
    (images / "a_link").symlink_to(images / "y_real", target_is_directory=True)
    (images / "z_link").symlink_to(images / "b_real", target_is_directory=True)
    assert [i for _, i in list_images(images)] == ["b_real/img000.png", "y_real/img001.png"]


def test_damaged_exif_leaves_the_image_as_stored(tmp_path, monkeypatch):
    # some Pillow versions raise on broken EXIF; one such photo must not end the whole run
    from PIL import ImageOps

    _images(tmp_path, 1)
    config = Preprocess(input_size=16)
    expected = load_pixels(tmp_path / "img000.png", config)

    def broken(img):
        raise TypeError("broken EXIF")
    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    np.testing.assert_array_equal(load_pixels(tmp_path / "img000.png", config), expected)


def test_a_photo_is_embedded_upright_as_its_exif_orientation_says(tmp_path):
    # a phone photo stored sideways with an orientation tag was embedded sideways
    rows, cols = np.mgrid[0:30, 0:40]
    upright = Image.fromarray(np.stack([rows * 8, cols * 6, (rows * cols) % 256], axis=-1).astype(np.uint8))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the camera wrote
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    stored.save(tmp_path / "photo.jpg", exif=exif, quality=100)
    upright.save(tmp_path / "upright.jpg", quality=100)
    config = Preprocess(input_size=16, resize="squash", center_crop=False)
    np.testing.assert_allclose(load_pixels(tmp_path / "photo.jpg", config),
                               load_pixels(tmp_path / "upright.jpg", config), atol=0.08)


def test_rerun_skips_done_images_and_appends_new_ones(tmp_path, encoder_path):
    images = _images(tmp_path / "imgs", 3)
    out = tmp_path / "e.parquet"
    enc = Encoder(encoder_path)
    embed_images(enc, list_images(images), out)
    before = read_embeddings(out)
    _images(images, 2, start=3)
    report = embed_images(enc, list_images(images), out)
    after = read_embeddings(out)
    assert (report.embedded, report.already_present) == (2, 3)
    assert after.matrix.shape[0] == 5
    np.testing.assert_array_equal(after.take(before.ids), before.matrix)


def test_a_failure_mid_run_keeps_the_checkpointed_embeddings(tmp_path, encoder_path, monkeypatch):
    images = _images(tmp_path / "imgs", 6)
    out = tmp_path / "e.parquet"
    enc = Encoder(encoder_path)
    calls = {"n": 0}
    real = Encoder.__call__

    def flaky(self, pixels):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("power cut")
        return real(self, pixels)

    monkeypatch.setattr(Encoder, "__call__", flaky)
    with pytest.raises(RuntimeError):
        embed_images(enc, list_images(images), out, batch_size=2, checkpoint=2)
    assert read_embeddings(out).matrix.shape[0] == 4  # two checkpoints landed whole
    monkeypatch.setattr(Encoder, "__call__", real)
    report = embed_images(enc, list_images(images), out, batch_size=2)
    assert report.embedded == 2 and read_embeddings(out).matrix.shape[0] == 6


def test_pixels_follow_the_declared_preprocessing(tmp_path):
    img = np.zeros((20, 40, 3), dtype=np.uint8)
    img[:, 10:30] = [255, 0, 0]  # a red centre square in a black frame, 40 wide and 20 high
    Image.fromarray(img).save(tmp_path / "x.png")
    config = Preprocess(input_size=10, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear")
    pixels = load_pixels(tmp_path / "x.png", config)
    assert pixels.shape == (10, 10, 3)  # shorter side to 10 (→ 20x10), then the centre crop
    np.testing.assert_allclose(pixels[5, 5], [1.0, 0.0, 0.0], atol=0.02)
    tensor = to_tensor(pixels[None], config)
    assert tensor.shape == (1, 3, 10, 10)
    np.testing.assert_allclose(tensor[0, :, 5, 5], [1.0, -1.0, -1.0], atol=0.04)
    bgr = to_tensor(pixels[None], Preprocess(input_size=10, mean=(0.5,) * 3, std=(0.5,) * 3, channel_order="BGR"))
    np.testing.assert_allclose(bgr[0, :, 5, 5], [-1.0, -1.0, 1.0], atol=0.04)


def test_sidecar_declares_preprocessing(tmp_path):
    path = tiny_encoder.write(tmp_path / "enc.onnx", size=16, dim=8,
                              sidecar={"input_size": 16, "resize": "squash", "l2_normalize": False})
    enc = Encoder(path)
    assert enc.config.resize == "squash" and enc.config.l2_normalize is False


def test_bad_sidecar_key_exits_2(tmp_path, capsys):
    path = tiny_encoder.write(tmp_path / "enc.onnx", sidecar={"input_sise": 16})
    _images(tmp_path / "imgs", 1)
    code = run(embed.main, ["--encoder", str(path), "--images", str(tmp_path / "imgs"),
                            "--out", str(tmp_path / "e.parquet")])
    assert code == 2 and "input_sise" in capsys.readouterr().err


def test_a_sidecar_without_input_size_takes_the_encoders_own(tmp_path):
    # it took CLIP's 224, and the first batch failed inside onnxruntime
    enc = Encoder(tiny_encoder.write(tmp_path / "enc.onnx", size=16, dim=8, sidecar={"resize": "squash"}))
    assert enc.config.input_size == 16 and enc.config.resize == "squash"


@pytest.mark.parametrize("sidecar, problem", [
    ([1, 2], "a JSON object"),  # once a TypeError, exit 1
    ({"input_size": "32"}, "input_size must be a whole number >= 8"),
    ({"std": [0, 0, 0]}, "std must be 3 numbers above 0"),  # once: all-NaN embeddings, exit 0
    ({"l2_normalize": "no"}, "l2_normalize must be true or false"),  # once read as true
    ({"input_size": 24}, "takes input of shape"),  # the encoder's is 32: once "unexpected InvalidArgument"
    ({"layout": "NHWC"}, "not NHWC images of side 32"),
])
def test_a_sidecar_of_the_wrong_kind_is_one_line_naming_it(tmp_path, capsys, sidecar, problem):
    path = tiny_encoder.write(tmp_path / "enc.onnx", size=32, dim=8, sidecar=sidecar)
    _images(tmp_path / "imgs", 1)
    code = run(embed.main, ["--encoder", str(path), "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "e.parquet")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "enc.preprocess.json" in err[0] and problem in err[0]
    assert not (tmp_path / "e.parquet").exists()


def test_pamela_image_paths_map_to_image_ids(tmp_path, encoder_path):
    root = tmp_path / "pamela"
    _images(root / "images" / "food", 2)
    records = [{"participant_id": "a", "image_id": 501 + k, "image_path": f"images/food/img{k:03d}.png",
                "original_score": 3} for k in range(2)]
    (root / "annotations").mkdir()
    (root / "annotations" / "pamela_train.json").write_text(json.dumps(records))
    out = tmp_path / "e.parquet"
    assert run(embed.main, ["--encoder", str(encoder_path), "--images", str(root / "images"),
                            "--pamela", str(root), "--out", str(out), "--quiet"]) == 0
    assert sorted(read_embeddings(out).ids.to_list()) == [501, 502]


def _pamela_root(tmp_path, n=3, prefix="images/food/"):
    """A PAMELA copy with n images under images/food and annotations naming them (ids 501...)."""
    root = tmp_path / "pamela"
    _images(root / "images" / "food", n)
    records = [{"participant_id": "a", "image_id": 501 + k, "image_path": f"{prefix}img{k:03d}.png",
                "original_score": 3} for k in range(n)]
    (root / "annotations").mkdir()
    (root / "annotations" / "pamela_train.json").write_text(json.dumps(records))
    return root


def test_pamela_image_paths_written_with_a_leading_dot_slash_match(tmp_path, encoder_path):
    # once: "300 file(s) are not in PAMELA's annotations", nothing embedded, exit 0
    root = _pamela_root(tmp_path, prefix="./images/food/")
    out = tmp_path / "e.parquet"
    assert run(embed.main, ["--encoder", str(encoder_path), "--images", str(root / "images"),
                            "--pamela", str(root), "--out", str(out), "--quiet"]) == 0
    assert sorted(read_embeddings(out).ids.to_list()) == [501, 502, 503]


def test_an_images_folder_linked_from_elsewhere_still_matches(tmp_path, encoder_path):
    root = _pamela_root(tmp_path)
    (root / "images").rename(tmp_path / "elsewhere")
    (root / "images").symlink_to(tmp_path / "elsewhere")
    out = tmp_path / "e.parquet"
    assert run(embed.main, ["--encoder", str(encoder_path), "--images", str(root / "images"),
                            "--pamela", str(root), "--out", str(out), "--quiet"]) == 0
    assert len(read_embeddings(out).ids) == 3


def test_no_file_matching_the_annotations_is_one_line_and_exit_2(tmp_path, encoder_path, capsys):
    root = _pamela_root(tmp_path)
    _images(tmp_path / "other", 2)
    code = run(embed.main, ["--encoder", str(encoder_path), "--images", str(tmp_path / "other"),
                            "--pamela", str(root), "--out", str(tmp_path / "e.parquet"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is an image_path of the annotations" in err[0]


def test_an_annotated_image_without_a_file_is_reported_and_named_by_fit(tmp_path, encoder_path):
    root = _pamela_root(tmp_path)
    (root / "images" / "food" / "img001.png").unlink()
    out = tmp_path / "e.parquet"
    assert run(embed.main, ["--encoder", str(encoder_path), "--images", str(root / "images"),
                            "--pamela", str(root), "--out", str(out), "--quiet"]) == 0
    report = pl.read_csv(tmp_path / "e.parquet.skipped.csv")
    assert report["path"].to_list() == ["images/food/img001.png"] and "no such file" in report["reason"][0]
    with pytest.raises(InputError, match="1 of them embed could not read: see"):
        read_embeddings(out).rows(pl.Series([501, 502]))


def test_an_image_path_with_two_image_ids_is_refused(tmp_path, encoder_path, capsys):
    root = _pamela_root(tmp_path)
    records = json.loads((root / "annotations" / "pamela_train.json").read_text())
    records.append({**records[0], "participant_id": "b", "image_id": 999})
    (root / "annotations" / "pamela_train.json").write_text(json.dumps(records))
    code = run(embed.main, ["--encoder", str(encoder_path), "--images", str(root / "images"),
                            "--pamela", str(root), "--out", str(tmp_path / "e.parquet"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "more than one image_id" in err and "501 and 999" in err


@pytest.mark.parametrize("broken", ["null ids", "null paths"])
def test_annotations_without_usable_path_and_id_pairs_are_one_line(tmp_path, encoder_path, capsys, broken):
    # a null image_id beside a real one failed in sorted(); no usable path at all in next(iter({}))
    root = _pamela_root(tmp_path)
    records = json.loads((root / "annotations" / "pamela_train.json").read_text())
    if broken == "null ids":
        records.append({**records[0], "participant_id": "b", "image_id": None})
        records.append({**records[0], "participant_id": "c", "image_id": 999})
    else:
        records = [{**r, "image_path": None} for r in records]
    (root / "annotations" / "pamela_train.json").write_text(json.dumps(records))
    code = run(embed.main, ["--encoder", str(encoder_path), "--images", str(root / "images"),
                            "--pamela", str(root), "--out", str(tmp_path / "e.parquet"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and ("more than one image_id" in err[0] if broken == "null ids"
                                            else "no annotations with image_path and image_id" in err[0])


def test_missing_encoder_exits_2(tmp_path, capsys):
    code = run(embed.main, ["--encoder", str(tmp_path / "none.onnx"), "--images", str(tmp_path),
                            "--out", str(tmp_path / "e.parquet")])
    assert code == 2 and "no such encoder" in capsys.readouterr().err


def test_tiny_encoder_refuses_an_image_embed_could_not_read(tmp_path, capsys):
    # --size 3 once wrote an encoder that embed then failed on with exit 1
    with pytest.raises(SystemExit) as stop:
        tiny_encoder.main(["--out", str(tmp_path / "e.onnx"), "--size", "3"])
    assert stop.value.code == 2 and "--size must be at least 8" in capsys.readouterr().err
    assert not (tmp_path / "e.onnx").exists()


def test_sixteen_bit_and_float_grayscale_keep_their_contrast(tmp_path):
    # PIL's own conversion clipped 16-bit values to near-white and float ones to black
    ramp = np.tile(np.linspace(0, 1, 32), (32, 1))
    Image.fromarray((ramp * 65535).astype(np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(ramp.astype(np.float32), mode="F").save(tmp_path / "float.tiff")
    config = Preprocess(input_size=16, resize="squash", interpolation="bilinear")
    for name in ("deep.png", "float.tiff"):
        pixels = load_pixels(tmp_path / name, config)
        assert pixels[:, :2].mean() < 0.15 and pixels[:, -2:].mean() > 0.85, name


def test_a_generator_adapter_prepares_images_as_embed_does(tmp_path, encoder_path):
    # the adapter squashed every image with bicubic, whatever the encoder's sidecar said
    from pamela_lite.steer import DiffusersAdapter

    wide = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    wide.save(tmp_path / "wide.png")
    encoder = Encoder(encoder_path)
    adapter = DiffusersAdapter(lambda prompt, seed: wide, encoder)
    np.testing.assert_allclose(adapter(["a cat"], [0])[0], encoder(load_pixels(tmp_path / "wide.png", encoder.config)[None])[0],
                               atol=1e-6)


def test_the_encoder_export_tool_without_its_libraries_says_what_to_install(tmp_path, monkeypatch, capsys):
    # it printed a traceback when torch was missing (the toolkit itself never needs torch)
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("export_encoder", Path(__file__).parents[1] / "embeddings" / "export_encoder.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)  # as on a machine without them
    with pytest.raises(SystemExit) as stop:
        tool.main(["--hf-dir", str(tmp_path), "--out", str(tmp_path / "e.onnx")])
    assert stop.value.code == 2 and "exporting needs torch and transformers" in capsys.readouterr().err


def _embed(encoder, images, out, capsys):
    capsys.readouterr()
    code = run(embed.main, ["--encoder", str(encoder), "--images", str(images), "--out", str(out), "--quiet"])
    return code, capsys.readouterr().err.strip().splitlines()


def test_resuming_with_another_encoder_of_the_same_width_is_refused(tmp_path, encoder_path, capsys):
    # its vectors were appended beside the first encoder's, silently
    images, out = _images(tmp_path / "imgs", 2), tmp_path / "e.parquet"
    assert _embed(encoder_path, images, out, capsys)[0] == 0
    other = tiny_encoder.write(tmp_path / "other.onnx", size=48, dim=16)
    _images(images, 1, start=5)
    code, err = _embed(other, images, out, capsys)
    assert code == 2 and len(err) == 1 and "was made by another encoder" in err[0]
    assert read_embeddings(out).matrix.shape[0] == 2  # the file is as it was


def test_ids_already_there_from_another_folder_are_named(tmp_path, encoder_path, capsys):
    # b/img000.png kept a/img000.png's vector under the shared id 'img000.png', silently; a moved folder
    # gives the same ids for the same images, so it is a warning, not a refusal
    out = tmp_path / "e.parquet"
    assert _embed(encoder_path, _images(tmp_path / "a", 2), out, capsys)[0] == 0
    code, err = _embed(encoder_path, _images(tmp_path / "b", 1, start=0), out, capsys)
    assert code == 0 and any("already there from" in line and "img000.png" in line for line in err)
    code, err = _embed(encoder_path, _images(tmp_path / "c", 1, start=7), out, capsys)  # new ids: nothing to say
    assert code == 0 and not any("already there" in line for line in err)
    assert sorted(read_embeddings(out).ids.to_list()) == ["img000.png", "img001.png", "img007.png"]


@pytest.mark.parametrize("first, then", [("photos", "photos/cats"), ("photos/cats", "photos")])
def test_images_of_a_folder_inside_or_around_one_embedded_before_are_said_to_get_a_second_id(
        first, then, tmp_path, encoder_path, capsys):
    # cats/img000.png embedded from photos/ became img000.png too from photos/cats/, silently
    _images(tmp_path / "photos" / "cats", 2)
    out = tmp_path / "e.parquet"
    assert _embed(encoder_path, tmp_path / first, out, capsys)[0] == 0
    code, err = _embed(encoder_path, tmp_path / then, out, capsys)
    warned = [line for line in err if "get a second id now" in line]
    assert code == 0 and len(warned) == 1 and "2 image(s)" in warned[0]
    assert "'cats/img000.png'" in warned[0] and "'img000.png'" in warned[0]
    code, err = _embed(encoder_path, tmp_path / then, out, capsys)  # again: nothing new gets a second id
    assert code == 0 and not any("get a second id now" in line for line in err)


def test_a_file_that_does_not_say_its_encoder_is_not_stamped_with_this_one(tmp_path, encoder_path, capsys):
    from pamela_lite.encoder import embeddings_source

    images, out = _images(tmp_path / "imgs", 2), tmp_path / "e.parquet"
    assert _embed(encoder_path, images, out, capsys)[0] == 0
    pl.read_parquet(out).write_parquet(out)  # as an earlier version (or another tool) wrote it
    _images(images, 1, start=5)
    code, err = _embed(encoder_path, images, out, capsys)
    assert code == 0 and any("does not say which encoder made it" in line for line in err)
    assert embeddings_source(out) is None and read_embeddings(out).matrix.shape[0] == 3


@pytest.mark.parametrize("report", ["mine.csv", "e.parquet", "enc.onnx", "link.csv"])
def test_a_report_named_over_another_file_is_refused_before_any_work(report, tmp_path, encoder_path, capsys):
    # --report naming --out once turned the embeddings into a 375-byte CSV, exit 0; a user's own CSV
    # was kept by a clean run but written over by one that skipped a file
    images, out = _images(tmp_path / "imgs", 1), tmp_path / "e.parquet"
    assert _embed(encoder_path, images, out, capsys)[0] == 0
    (tmp_path / "mine.csv").write_text("path,reason_code\nx,1\n")
    (images / "broken.png").write_bytes(b"not a png")
    before = {p: p.read_bytes() for p in (out, encoder_path, tmp_path / "mine.csv")}
    (tmp_path / "link.csv").symlink_to(out)  # a .csv name that is --out all the same
    target = {"mine.csv": tmp_path / "mine.csv", "e.parquet": out, "enc.onnx": encoder_path,
              "link.csv": tmp_path / "link.csv"}[report]
    capsys.readouterr()
    code = run(embed.main, ["--encoder", str(encoder_path), "--images", str(images), "--out", str(out),
                            "--report", str(target), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(target) in err[0], err
    assert report != "link.csv" or "is also --out" in err[0]
    assert all(p.read_bytes() == content for p, content in before.items())


def test_files_an_earlier_run_skipped_stay_in_the_report_until_embedded(tmp_path, encoder_path, capsys):
    out = tmp_path / "e.parquet"
    first = _images(tmp_path / "a", 1)
    (first / "broken.png").write_bytes(b"not a png")
    assert _embed(encoder_path, first, out, capsys)[0] == 0
    report = tmp_path / "e.parquet.skipped.csv"
    assert pl.read_csv(report)["image_id"].to_list() == ["broken.png"]
    code, err = _embed(encoder_path, _images(tmp_path / "b", 1, start=3), out, capsys)  # nothing skipped here
    assert code == 0 and pl.read_csv(report)["image_id"].to_list() == ["broken.png"]  # once removed
    _images(first, 1, start=9)
    (first / "broken.png").unlink()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(first / "broken.png")  # fixed, embedded now
    assert _embed(encoder_path, first, out, capsys)[0] == 0 and not report.exists()


def test_a_skipped_file_deleted_since_leaves_the_report(tmp_path, encoder_path, capsys):
    out, first = tmp_path / "e.parquet", _images(tmp_path / "a", 1)
    (first / "broken.png").write_bytes(b"not a png")
    assert _embed(encoder_path, first, out, capsys)[0] == 0
    (first / "broken.png").unlink()  # the obvious fix for "not an image"
    code, err = _embed(encoder_path, _images(tmp_path / "b", 1, start=3), out, capsys)
    assert code == 0 and not (tmp_path / "e.parquet.skipped.csv").exists()


def test_a_link_to_a_missing_file_is_reported_as_skipped(tmp_path, encoder_path, capsys):
    images = _images(tmp_path / "imgs", 1)
    (images / "gone.png").symlink_to(tmp_path / "nowhere.png")
    assert _embed(encoder_path, images, tmp_path / "e.parquet", capsys)[0] == 0
    rows = pl.read_csv(tmp_path / "e.parquet.skipped.csv")
    assert rows["image_id"].to_list() == ["gone.png"] and rows["reason"][0] == "a link to a file that does not exist"


@pytest.mark.parametrize("case, problem", [
    ("csv_out", "name the file .parquet"), ("one_image", "an image, not a folder"),
    ("empty_folder", "holds no files"), ("nothing_readable", "could be embedded"),
])
def test_embed_inputs_that_give_no_usable_file_exit_2_with_one_line(tmp_path, encoder_path, capsys, case, problem):
    images, out = _images(tmp_path / "imgs", 1), tmp_path / "e.parquet"
    if case == "csv_out":
        out = tmp_path / "e.csv"  # it once held Parquet bytes that fit could not read
    elif case == "one_image":
        images = images / "img000.png"
    elif case == "empty_folder":
        images = tmp_path / "none"
        images.mkdir()
    else:
        images = tmp_path / "text"
        images.mkdir()
        (images / "ratings.csv").write_text("participant_id,image_id,rating\n")
    code, err = _embed(encoder_path, images, out, capsys)
    assert code == 2 and len(err) == 1 and problem in err[0]
    assert not out.exists()


def test_an_unknown_image_id_is_shown_beside_ids_the_file_has(tmp_path, encoder_path):
    images, out = _images(tmp_path / "imgs", 2), tmp_path / "e.parquet"
    embed_images(Encoder(encoder_path), list_images(images), out)
    with pytest.raises(InputError, match=r"its ids look like 'img000.png', 'img001.png'") as caught:
        read_embeddings(out).rows(pl.Series(["imgs/img000.png"]))
    assert "could not read" not in str(caught.value)  # nothing was skipped: no report to point at
    Path(f"{out}.skipped.csv").write_text("file,why\nx,y\n")  # not embed's: the message stays the real one
    with pytest.raises(InputError, match="have no embedding"):
        read_embeddings(out).rows(pl.Series(["imgs/img000.png"]))


def test_an_interrupted_embed_keeps_what_it_embedded_since_the_last_checkpoint(tmp_path, encoder_path, monkeypatch):
    # Ctrl-C threw away everything after the last checkpoint (1,024 images by default)
    images, out = _images(tmp_path / "imgs", 5), tmp_path / "e.parquet"
    encoder, calls = Encoder(encoder_path), []
    real = Encoder.__call__

    def stop_on_third_batch(self, pixels):
        calls.append(len(pixels))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, pixels)

    monkeypatch.setattr(Encoder, "__call__", stop_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        embed_images(encoder, list_images(images), out, batch_size=2, checkpoint=100)
    assert read_embeddings(out).matrix.shape[0] == 4  # two batches of two, none half-written
    monkeypatch.setattr(Encoder, "__call__", real)
    report = embed_images(encoder, list_images(images), out, batch_size=2)
    assert report.already_present == 4 and report.embedded == 1


def test_a_report_nobody_can_write_is_refused_before_any_work(tmp_path, encoder_path, capsys):
    # it failed after the embedding, as an unexpected FileNotFoundError (exit 1)
    with pytest.raises(SystemExit) as done:  # an argument error, as for --out
        run(embed.main, ["--encoder", str(encoder_path), "--images", str(_images(tmp_path / "imgs", 1)),
                         "--out", str(tmp_path / "e.parquet"), "--report", "/proc/pamela_lite_r.csv", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and len(err) == 1 and "/proc is a folder this user cannot write in" in err[0]
    assert not (tmp_path / "e.parquet").exists()
