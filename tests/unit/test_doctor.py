"""The doctor's advice on slow cgroup migrations, for each cgroup layout, on fake trees."""

from pathlib import Path

from corral.doctor import migration_check


def test_a_fast_migration_is_fine_and_needs_no_fix(tmp_path: Path) -> None:
    check = migration_check(0.3, tmp_path)
    assert check.ok
    assert not check.required
    assert check.detail == "0.3 ms to move a process into a group after 100 ms idle"
    assert check.remedy == ""


def test_a_slow_migration_names_the_remount_of_the_cgroup2_hierarchy_that_exists(tmp_path: Path) -> None:
    v2, hybrid, v1 = tmp_path / "v2", tmp_path / "hybrid", tmp_path / "v1"
    (v2 / "cgroup.controllers").parent.mkdir()
    (v2 / "cgroup.controllers").write_text("memory pids cpu\n")
    (hybrid / "unified").mkdir(parents=True)
    (hybrid / "unified" / "cgroup.controllers").write_text("")
    (v1 / "memory").mkdir(parents=True)
    boot = "boot with cgroup_favordynmods=true (kernel 6.7+); forks and exits then cost a little more"
    remedies = {root.name: migration_check(7.6, root).remedy for root in (v2, hybrid, v1)}
    assert remedies == {
        "v2": f"mount -o remount,favordynmods {v2} (kernel 6.0+), or {boot}",
        "hybrid": f"mount -o remount,favordynmods {hybrid / 'unified'} (kernel 6.0+), or {boot}",
        "v1": boot,
    }
    check = migration_check(7.6, v2)
    assert not check.ok
    assert not check.required
    assert check.detail.startswith("7.6 ms to move a process into a group after 100 ms idle: the kernel waits")
