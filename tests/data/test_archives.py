"""Reading tar, tar.gz and zip archives in place; refusing unsafe members; safe extraction."""

from __future__ import annotations

import io
import pickle
import random
import tarfile
import zipfile
from pathlib import Path

import pytest

from encnet_core.data.archives import check_member_name, open_archive, safe_extract
from encnet_core.errors import ArchiveError

FILES = {
    "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt": b"2007_000033\n2007_000042\n",
    "VOCdevkit/VOC2012/JPEGImages/2007_000033.jpg": random.Random(1).randbytes(70_000),
    "VOCdevkit/VOC2012/SegmentationClass/2007_000033.png": random.Random(2).randbytes(50_000),
    "empty.txt": b"",
}


def add_tar_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_tar(path: Path, files: dict[str, bytes] = FILES, mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        directory = tarfile.TarInfo("./VOCdevkit")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
        for name, data in files.items():
            add_tar_file(tar, "./" + name, data)
    return path


def make_zip(path: Path, files: dict[str, bytes] = FILES) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("VOCdevkit/", b"")
        for name, data in files.items():
            zf.writestr(name, data)
    return path


@pytest.fixture(params=["tar", "tar.gz", "zip"])
def archive_path(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    # Misleading extensions on purpose: the format is detected from the content.
    if request.param == "tar":
        return make_tar(tmp_path / "a.tar.gz")
    if request.param == "tar.gz":
        return make_tar(tmp_path / "a.zip", mode="w:gz")
    return make_zip(tmp_path / "a.tar")


def test_names_and_reads_equal_the_bytes_written(archive_path: Path) -> None:
    with open_archive(archive_path) as archive:
        assert archive.names() == list(FILES)
        for name, data in FILES.items():
            assert archive.read(name) == data
        assert archive.exists("./VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt")
        assert not archive.exists("VOCdevkit")  # directories are not files
        with pytest.raises(ArchiveError, match="no file 'missing.txt'"):
            archive.read("missing.txt")


def test_archive_pickles_by_path(archive_path: Path) -> None:
    with open_archive(archive_path) as archive:
        clone = pickle.loads(pickle.dumps(archive))
    with clone:
        assert clone.path == archive_path
        assert clone.read("empty.txt") == b"" and clone.names() == list(FILES)


def tar_with(path: Path, member: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w") as tar:
        add_tar_file(tar, "ok.txt", b"ok")
        tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isreg() else None)
    return path


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = 1 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (tar_member("../evil"), "'..' component"),
        (tar_member("data/../../evil"), "'..' component"),
        (tar_member("/etc/evil"), "absolute path"),
        (tar_member("link", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link to '/etc/passwd'"),
        (tar_member("hard", tarfile.LNKTYPE, "ok.txt"), "hard link"),
        (tar_member("dev", tarfile.CHRTYPE), "device file"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "device"],
)
def test_unsafe_tar_members_are_refused(tmp_path: Path, member: tarfile.TarInfo, reason: str) -> None:
    path = tar_with(tmp_path / "bad.tar", member)
    with pytest.raises(ArchiveError, match="unsafe member") as info:
        open_archive(path)
    assert str(path) in str(info.value) and repr(member.name) in str(info.value) and reason in str(info.value)


def test_unsafe_zip_members_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ok.txt", b"ok")
        zf.writestr("../x", b"evil")
    with pytest.raises(ArchiveError, match=r"unsafe member '\.\./x'"):
        open_archive(path)
    link = zipfile.ZipInfo("link")
    link.external_attr = 0o120777 << 16  # a Unix symlink entry
    with zipfile.ZipFile(tmp_path / "link.zip", "w") as zf:
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(ArchiveError, match="symbolic link"):
        open_archive(tmp_path / "link.zip")


def test_check_member_name() -> None:
    assert check_member_name("./a//b/./c.png") == "a/b/c.png"
    assert check_member_name("a\\b.txt") == "a/b.txt"
    for bad in ("C:/windows/x", "c:x", "\\\\server\\share\\x", "a\\..\\..\\x", "/abs", ".."):
        with pytest.raises(ArchiveError, match="unsafe member"):
            check_member_name(bad, archive="x.zip")


def test_safe_extract_writes_inside_dest_only(archive_path: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    calls: list[tuple[str, int, int | None]] = []
    written = safe_extract(archive_path, dest, progress=lambda *call: calls.append(call))
    root = dest.resolve()
    assert written == [root / name for name in FILES]
    for name, data in FILES.items():
        assert (dest / name).read_bytes() == data
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == sorted(FILES)
    assert calls[-1] == (f"extracting {archive_path.name}", len(FILES), len(FILES))
    only = "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"
    assert safe_extract(archive_path, tmp_path / "one", members=[only]) == [
        (tmp_path / "one" / only).resolve()
    ]


def test_safe_extract_refuses_targets_that_resolve_outside(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "a.tar")
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "VOCdevkit").symlink_to(outside, target_is_directory=True)  # a link planted in the destination
    with pytest.raises(ArchiveError, match="outside"):
        safe_extract(archive, dest)
    assert list(outside.iterdir()) == []
    with pytest.raises(ArchiveError, match="outside"):
        safe_extract(archive, tmp_path / "other", members=["../escape.txt"])
    assert not (tmp_path / "escape.txt").exists()


@pytest.mark.parametrize("kind", ["tar", "tar.gz", "zip"])
def test_truncated_archive_raises(tmp_path: Path, kind: str) -> None:
    full = tmp_path / f"full.{kind}"
    if kind == "zip":
        make_zip(full)
    else:
        make_tar(full, mode="w:gz" if kind == "tar.gz" else "w")
    data = full.read_bytes()
    cut = tmp_path / f"cut.{kind}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArchiveError, match="cut"):
        with open_archive(cut) as archive:
            for name in archive.names():
                archive.read(name)


def test_missing_and_non_archive_files(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="no such file"):
        open_archive(tmp_path / "missing.tar")
    text = tmp_path / "notes.tar"
    text.write_bytes(b"not an archive\n" * 100)
    with pytest.raises(ArchiveError, match="not a tar or zip archive"):
        open_archive(text)
