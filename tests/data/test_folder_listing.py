"""The folder source's listing and its on-demand items: the same images, order and items as pathlib's
``sorted(rglob)`` listing gave, while the plan holds one string per image."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from encnet_core.data.sources.base import Item, ItemList
from encnet_core.data.sources.folder import IMAGE_SUFFIXES, _images_under, plan_folder

TRICKY = ["a.jpg", "a-b.jpg", "a/b.jpg", "a/c/.hidden.png", ".jpg", "B.JPG", "x.txt", "dir.jpg/z.png", "a/b c.webp",
          "a.b.jpg", "\u00e9.png", "n10.jpg", "n9.jpg"]  # fmt: skip


def test_listing_matches_sorted_rglob(tmp_path: Path) -> None:
    for relative in TRICKY:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"x")
    if hasattr(os, "symlink"):
        os.symlink(tmp_path / "a", tmp_path / "linked")  # a symlinked folder is not entered
        os.symlink(tmp_path / "a.jpg", tmp_path / "l.jpg")  # a symlinked file is listed
        os.symlink(tmp_path / "gone.jpg", tmp_path / "broken.jpg")  # a broken link is no file
    found = sorted(p for p in tmp_path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    assert _images_under(tmp_path) == [p.relative_to(tmp_path).as_posix() for p in found]
    assert _images_under(tmp_path)[:4] == ["B.JPG", "a/b c.webp", "a/b.jpg", "a/c/.hidden.png"]  # by component


@pytest.mark.parametrize("relative_roots", [False, True])
def test_items_name_image_and_mask_as_paths_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relative_roots: bool) -> None:
    names = ["a/b.jpg", "a.b.jpg", "c.png", "d/.e.png"]
    for name in names:
        for top, file in (("images", name), ("masks", os.path.splitext(name)[0] + ".png")):
            (tmp_path / top / file).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / top / file).write_bytes(b"x")
    (tmp_path / "classes.txt").write_text("a\nb\n")
    monkeypatch.chdir(tmp_path)
    images, masks = (Path("images"), Path("./masks/")) if relative_roots else (tmp_path / "images", tmp_path / "masks")
    plan = plan_folder({}, tmp_path, {"images": images, "masks": masks, "classes": tmp_path / "classes.txt", "val_fraction": 0.0})
    items = plan.splits["train"]
    assert isinstance(items, ItemList) and len(items) == 4
    expected = []
    for relative in sorted(Path(n) for n in names):
        expected.append((relative.with_suffix("").as_posix(), ("", str(images / relative)),
                         ("", str((masks / relative).with_suffix(".png")))))  # fmt: skip
    assert [(i.name, i.image, i.mask) for i in items] == expected
    assert (items[1].name, [i.name for i in items[1:3]], [i.name for i in items][-1]) == (expected[1][0], [e[0] for e in expected[1:3]], expected[-1][0])
    chunk = items[0:2]
    assert isinstance(chunk, list) and all(isinstance(i, Item) for i in chunk)
    again = pickle.loads(pickle.dumps(chunk))  # what a conversion worker receives
    assert [(i.name, i.image, i.mask) for i in again] == [(i.name, i.image, i.mask) for i in chunk]
