"""Reading tar, tar.gz and zip archives in place; refusing unsafe members; safe extraction."""

from __future__ import annotations

import gzip
import io
import math
import pickle
import random
import tarfile
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from encnet_core.errors import ArchiveError, ConfigError
from encnet_core.fetch.archives import (
    ArchiveLimits,
    MiB,
    check_member_name,
    open_archive,
    safe_extract,
    verify_archive,
)

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
    units: set[str] = set()
    written = safe_extract(archive_path, dest, progress=lambda *call, unit: (calls.append(call), units.add(unit)))
    root = dest.resolve()
    assert written == [root / name for name in FILES]
    for name, data in FILES.items():
        assert (dest / name).read_bytes() == data
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == sorted(FILES)
    assert calls[-1] == (f"extracting {archive_path.name}", len(FILES), len(FILES))
    assert units == {"items"}  # members, not bytes
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


# ----------------------------------------------------------------------------- expansion limits


def test_a_zip_bomb_is_refused_when_opened(tmp_path: Path) -> None:
    """40 MiB of zeros deflate to about 40 kB: a ratio of about 1000, past the default 400."""
    path = tmp_path / "ADEChallengeData2016.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ADEChallengeData2016/objectInfo150.txt", b"Idx\tName\n")
        zf.writestr("ADEChallengeData2016/images/training/ADE_train_1.jpg", bytes(40 * MiB))
    assert path.stat().st_size < 100_000
    tracemalloc.start()
    with pytest.raises(ArchiveError) as info:
        open_archive(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    message = str(info.value)
    assert message.startswith(f"{path}: expands to at least 40.0 MiB from ")
    assert "more than 400 times" in message and "decompression bomb" in message and "--max-ratio" in message
    assert peak < MiB  # refused from the central directory: nothing was decompressed
    with open_archive(path, ArchiveLimits(max_ratio=5000)) as archive:  # trusted: opens, and reads
        assert archive.read("ADEChallengeData2016/images/training/ADE_train_1.jpg") == bytes(40 * MiB)


def test_a_tar_gz_bomb_is_refused_as_soon_as_the_scan_passes_the_limit(tmp_path: Path) -> None:
    """The ratio of a compressed tar is the whole stream's: the scan stops at the first member past it."""
    path = tmp_path / "benchmark.tgz"
    with tarfile.open(path, "w:gz") as tar:
        for index in range(8):  # 8 x 8 MiB of zeros: 64 MiB from about 64 kB
            add_tar_file(tar, f"benchmark_RELEASE/dataset/cls/{index}.mat", bytes(8 * MiB))
    disk = path.stat().st_size
    limit = ArchiveLimits().expanded_limit(disk)
    assert limit == 32 * MiB  # the floor: 400 x the archive's size is less
    with pytest.raises(ArchiveError, match=r"expands to at least 32\.0 MiB from .* more than 400 times"):
        open_archive(path)  # the 4th member ends 4 headers past 32 MiB: the scan stops there, not at 64 MiB
    with open_archive(path, ArchiveLimits(max_ratio=10_000)) as archive:
        assert len(archive.names()) == 8


@pytest.mark.parametrize("kind", ["tar", "tar.gz", "zip"])
def test_the_ratio_is_decompressed_size_over_size_on_disk(tmp_path: Path, kind: str) -> None:
    """With no floor and a limit of 2: random bytes (ratio about 1) pass, text (ratio > 10) does not."""
    strict = ArchiveLimits(max_ratio=2, ratio_floor=0)
    text = {"a.txt": b"2007_000033\n" * 20_000}
    for files, refused in ((FILES, False), (text, kind != "tar")):  # a plain tar cannot expand
        path = tmp_path / f"{len(files)}.{kind}"
        make_zip(path, files) if kind == "zip" else make_tar(path, files, "w:gz" if kind == "tar.gz" else "w")
        if refused:
            with pytest.raises(ArchiveError, match="more than 2 times"):
                open_archive(path, strict)
        else:
            with open_archive(path, strict) as archive:
                assert archive.names() == list(files)


def test_a_member_over_the_size_limit_is_refused_when_read(archive_path: Path) -> None:
    limits = ArchiveLimits(max_member_bytes=60_000)
    with open_archive(archive_path, limits) as archive:
        assert archive.names() == list(FILES)  # listing is fine: only reading the big member is refused
        big = "VOCdevkit/VOC2012/JPEGImages/2007_000033.jpg"  # 70 000 bytes
        tracemalloc.start()
        with pytest.raises(ArchiveError) as info:
            archive.read(big)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert str(info.value) == (
            f"{archive_path}: member {big!r} is 68.4 KiB, more than the 58.6 KiB allowed for one member; "
            "refusing to read it (raise --max-member-size if you trust this archive)"
        )
        assert peak < 60_000
        small = "VOCdevkit/VOC2012/SegmentationClass/2007_000033.png"  # 50 000 bytes
        assert archive.read(small) == FILES[small]
        clone = pickle.loads(pickle.dumps(archive))  # workers get the same limits
    with clone:
        assert clone.limits == limits


def test_safe_extract_honours_the_member_limit(archive_path: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match="2007_000033.jpg' is 68.4 KiB, more than the 1000 bytes allowed"):
        safe_extract(archive_path, dest, limits=ArchiveLimits(max_member_bytes=1000))
    written = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert written == ["VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"]  # the member before it; no temp file


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"max_member_bytes": 0}, "member size limit"),
        ({"max_ratio": 0.5}, "ratio limit must be a number of at least 1"),
        ({"max_ratio": math.nan}, "ratio limit"),
        ({"max_ratio": math.inf}, "ratio limit"),
        ({"ratio_floor": -1}, "ratio floor"),
    ],
)
def test_limits_are_checked(limits: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ArchiveLimits(**limits)


# ----------------------------------------------------------------------------- integrity without a checksum


def test_verify_archive_accepts_whole_archives(archive_path: Path) -> None:
    verify_archive(archive_path)


def test_verify_archive_reads_a_compressed_tar_to_its_trailer(tmp_path: Path) -> None:
    """A tar.gz cut inside its gzip trailer lists completely; only reading on to the end shows the cut."""
    full = make_tar(tmp_path / "full.tar.gz", mode="w:gz")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(full.read_bytes()[:-4])  # the 4-byte length of the gzip trailer is missing
    with open_archive(cut) as archive:
        assert archive.names() == list(FILES)
    with pytest.raises(ArchiveError, match=rf"^{cut}: truncated or corrupt archive \(Compressed file ended"):
        verify_archive(cut)
    damaged = bytearray(full.read_bytes())
    damaged[-8] ^= 0xFF  # the CRC of the trailer
    (tmp_path / "crc.tar.gz").write_bytes(bytes(damaged))
    with pytest.raises(ArchiveError, match="CRC check failed"):
        verify_archive(tmp_path / "crc.tar.gz")


@pytest.mark.parametrize("kind", ["tar", "tar.gz", "zip"])
def test_verify_archive_refuses_a_truncated_archive(tmp_path: Path, kind: str) -> None:
    if kind == "zip":
        full = make_zip(tmp_path / "full")
    else:
        full = make_tar(tmp_path / "full", mode="w:gz" if kind == "tar.gz" else "w")
    cut = tmp_path / f"cut.{kind}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size * 2 // 3])
    with pytest.raises(ArchiveError, match=rf"^{cut}: "):
        verify_archive(cut)


def test_gzip_padding_after_the_stream_is_accepted(tmp_path: Path) -> None:
    """Some tools pad a .tgz with zero bytes after the gzip stream; that is not damage."""
    full = make_tar(tmp_path / "full.tar.gz", mode="w:gz")
    padded = tmp_path / "padded.tar.gz"
    padded.write_bytes(full.read_bytes() + bytes(512))
    verify_archive(padded)
    assert gzip.decompress(full.read_bytes())  # the unpadded stream is a whole gzip file
