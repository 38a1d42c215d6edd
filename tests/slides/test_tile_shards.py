"""`pathoucc tile --shard I/N` and `--slide-list` (issue 9 item 4): shards split a cohort with no shared output."""

import shutil
from pathlib import Path

import pytest
from helpers import run_tile

from pathoucc.errors import PathouccError
from pathoucc.slides.cohort import parse_shard, read_slide_list, shard_slides


def test_shards_partition_the_slides_deterministically():
    slides = [Path(f"/data/{name}.svs") for name in ("c", "a", "e", "b", "d", "f", "g")]
    slides.append(Path("/other/a.svs"))  # same output name as /data/a.svs: both go to the same shard
    shards = [shard_slides(slides, i, 3) for i in (1, 2, 3)]
    assert [[p.stem for p in s] for s in shards] == [["a", "a", "d", "g"], ["b", "e"], ["c", "f"]]
    assert sorted(str(p) for s in shards for p in s) == sorted(map(str, slides))
    assert shard_slides(list(reversed(slides)), 1, 3) == shards[0]  # whatever order the list came in
    assert shard_slides(slides, 1, 1) == sorted(slides, key=lambda p: (p.stem, str(p)))
    assert shard_slides(slides[:2], 3, 3) == []  # more shards than slides: some are empty


@pytest.mark.parametrize("text", ["0/4", "5/4", "1/0", "a/b", "2", "1/2/3", "-1/2", ""])
def test_bad_shards_are_refused(text):
    with pytest.raises(PathouccError, match="--shard"):
        parse_shard(text)


def test_slide_list_skips_blank_lines_and_comments(tmp_path):
    listing = tmp_path / "slides.txt"
    listing.write_text("# cohort A\nslides/a.svs\n\n  /abs/b.svs  \n")
    assert read_slide_list(listing) == [Path("slides/a.svs"), Path("/abs/b.svs")]
    listing.write_text("# nothing\n")
    with pytest.raises(PathouccError, match="names no slide"):
        read_slide_list(listing)


def test_cli_shards_write_disjoint_outputs(digit_slide, tmp_path):
    folder = tmp_path / "slides"
    folder.mkdir()
    for name in ("b", "a", "c"):
        shutil.copy(digit_slide["slide"], folder / f"{name}.tif")
    listing = tmp_path / "slides.txt"
    listing.write_text("\n".join(str(folder / f"{n}.tif") for n in ("c", "b", "a")) + "\n")
    outs = {}
    for shard in ("1/2", "2/2"):
        out = tmp_path / f"tiles{shard[0]}"
        proc = run_tile("--slide-list", listing, "--out", out, "--shard", shard, "--patch-size", 128, "--level", 0)
        assert proc.returncode == 0, proc.stderr
        assert f"shard {shard}:" in proc.stdout
        outs[shard] = sorted(p.name for p in out.glob("*.h5"))
    assert outs == {"1/2": ["a.h5", "c.h5"], "2/2": ["b.h5"]}


@pytest.mark.parametrize("args, words", [
    (["--shard", "3/2"], "--shard: 3/2 is out of range"),
    (["--shard", "x"], "--shard: expected I/N"),
    (["--slide-list", "missing.txt"], "missing.txt: slide list not found"),
    ([], "no slides: give slide files or --slide-list FILE"),
])
def test_cli_bad_shard_or_list_is_one_line(tmp_path, args, words):
    proc = run_tile(*args, "--out", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0]
