"""The overlay mount's option string and the mount table's parsing, as data."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.overlay import FEATURES, Mount, options, parse_mountinfo

MOUNTINFO = (
    "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard\n"
    "45 22 0:39 / /srv/jobs/a\\040b/repo rw,nosuid,nodev,relatime shared:2 - overlay overlay "
    "rw,lowerdir=/srv/git/trees/app-1/abc/files,upperdir=/srv/jobs/a\\040b/repo,workdir=/srv/git/layers/x/work,"
    "redirect_dir=on,uuid=on\n"
    "46 22 0:40 / /merged rw shared:3 - overlay overlay rw,lowerdir=/l1:/l2,upperdir=/u,workdir=/w\n"
    "garbage line without the separator\n"
)


def test_options_name_the_three_directories_and_the_features() -> None:
    built = options(Path("/t/files"), Path("/j/repo"), Path("/c/work"))
    assert built == f"lowerdir=/t/files,upperdir=/j/repo,workdir=/c/work,{FEATURES}"
    assert "redirect_dir=on" in built
    assert "index=off" in built


@pytest.mark.parametrize("bad", ["/a,b", "/a:b", "/a\\b", "relative", "/a\nb"])
@pytest.mark.parametrize("which", ["lower", "upper", "work"])
def test_options_refuse_a_path_the_kernel_would_split(bad: str, which: str) -> None:
    paths = {"lower": Path("/l"), "upper": Path("/u"), "work": Path("/w"), which: Path(bad)}
    with pytest.raises(ValueError, match=f"overlay's {which} directory"):
        options(paths["lower"], paths["upper"], paths["work"])


def test_the_mount_table_is_parsed_with_its_escapes() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert [(m.point, m.fstype) for m in mounts] == [
        (Path("/"), "ext4"),
        (Path("/srv/jobs/a b/repo"), "overlay"),
        (Path("/merged"), "overlay"),
    ]
    job = mounts[1]
    assert job.lower == Path("/srv/git/trees/app-1/abc/files")
    assert job.option("upperdir") == "/srv/jobs/a b/repo"
    assert job.option("redirect_dir") == "on"
    assert job.option("nothing") is None
    assert mounts[2].lower == Path("/l1")  # the first (top) of several lower layers
    assert mounts[0].lower is None


def test_a_mount_without_lowerdir_has_no_lower() -> None:
    assert Mount(Path("/x"), "tmpfs", (("size", "1m"),)).lower is None
