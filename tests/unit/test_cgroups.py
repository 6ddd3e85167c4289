"""Cgroup detection and limit files, against fake cgroup trees built in a temporary directory."""

from pathlib import Path

from corral.sandbox import cgroups
from corral.sandbox.spec import Limits

HYBRID = """12:pids:/
4:memory:/process_api/abc
1:cpu,cpuacct:/
0::/
"""
V2 = "0::/user.slice/session-1.scope\n"


def test_parse_proc_cgroup() -> None:
    assert cgroups.parse_proc_cgroup(HYBRID) == {
        "pids": "/",
        "memory": "/process_api/abc",
        "cpu": "/",
        "cpuacct": "/",
        "": "/",
    }


def make_v1(root: Path) -> None:
    (root / "memory/process_api/abc").mkdir(parents=True)
    (root / "pids").mkdir()
    (root / "cpu").mkdir()
    (root / "unified").mkdir()
    (root / "unified/cgroup.procs").touch()


def test_v1_hybrid_groups_live_below_our_own_group(tmp_path: Path) -> None:
    make_v1(tmp_path)
    driver = cgroups.detect(tmp_path, HYBRID)
    assert driver.version == 1
    assert driver.bases == {
        "memory": tmp_path / "memory/process_api/abc/corral",
        "pids": tmp_path / "pids/corral",
        "cpu": tmp_path / "cpu/corral",
        "unified": tmp_path / "unified/corral",
    }
    group = driver.group("s3")
    assert group.memory == tmp_path / "memory/process_api/abc/corral/s3"
    assert group.procs_files()[-1] == tmp_path / "unified/corral/s3/cgroup.procs"


def test_v1_limits_are_written_to_the_v1_files(tmp_path: Path) -> None:
    make_v1(tmp_path)
    group = cgroups.detect(tmp_path, HYBRID).group("s0")
    for directory in group.dirs:
        directory.mkdir(parents=True)
    for name in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"):
        (group.memory / name).touch()  # type: ignore[operator]
    (group.pids / "pids.max").touch()  # type: ignore[operator]
    for name in ("cpu.cfs_period_us", "cpu.cfs_quota_us"):
        (group.cpu / name).touch()  # type: ignore[operator]
    group.apply(Limits(memory=64 << 20, pids=32, cpus=0.5))
    assert (group.memory / "memory.limit_in_bytes").read_text() == str(64 << 20)  # type: ignore[operator]
    assert (group.memory / "memory.memsw.limit_in_bytes").read_text() == str(64 << 20)  # type: ignore[operator]
    assert (group.pids / "pids.max").read_text() == "32"  # type: ignore[operator]
    assert (group.cpu / "cpu.cfs_quota_us").read_text() == "50000"  # type: ignore[operator]


def test_v2_groups_and_limits(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    driver = cgroups.detect(tmp_path, V2)
    assert driver.version == 2
    group = driver.group("s1")
    assert group.dirs == (tmp_path / "corral/s1",)
    group.dirs[0].mkdir(parents=True)
    for name in ("memory.max", "memory.swap.max", "pids.max", "cpu.max"):
        (group.dirs[0] / name).touch()
    group.apply(Limits(memory=1 << 30, pids=100, cpus=2))
    assert (group.dirs[0] / "memory.max").read_text() == str(1 << 30)
    assert (group.dirs[0] / "memory.swap.max").read_text() == "0"
    assert (group.dirs[0] / "cpu.max").read_text() == "200000 100000"


def test_v2_without_controllers_is_unavailable_with_a_reason(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu io\n")
    driver = cgroups.detect(tmp_path, V2)
    assert not driver.available
    assert "memory" in driver.note
    assert "pids" in driver.note


def test_no_writable_hierarchy_is_unavailable(tmp_path: Path) -> None:
    driver = cgroups.detect(tmp_path, HYBRID)
    assert not driver.available
    assert "run corral as root" in driver.note


def test_oom_and_peak_are_read_from_the_memory_files(tmp_path: Path) -> None:
    group = cgroups.Cgroup(1, tmp_path, None, None, None)
    (tmp_path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    (tmp_path / "memory.max_usage_in_bytes").write_text("123456\n")
    assert group.oom_kills() == 2
    assert group.peak_memory() == 123456
    v2 = cgroups.Cgroup(2, tmp_path, tmp_path, tmp_path, None)
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
    (tmp_path / "memory.peak").write_text("999\n")
    assert (v2.oom_kills(), v2.peak_memory()) == (1, 999)


def test_leftovers_lists_existing_groups(tmp_path: Path) -> None:
    make_v1(tmp_path)
    driver = cgroups.detect(tmp_path, HYBRID)
    (driver.bases["pids"] / "s4").mkdir(parents=True)
    (driver.bases["memory"] / "s4").mkdir(parents=True)
    (driver.bases["memory"] / "s9").mkdir(parents=True)
    assert sorted(driver.leftovers()) == ["s4", "s9"]
