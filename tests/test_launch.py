"""Who a process is in its launch (torchrun's variables, or SLURM's inside a job step), and what the launcher
reports when the trainers end."""

from __future__ import annotations

import pytest

from scripts.launch import outcome
from util.dist import Launch, LaunchError, first_host, launch_of, port_of_job, tasks_per_node

STEP = {"SLURM_JOB_ID": "4711", "SLURM_STEP_ID": "0", "SLURM_PROCID": "3", "SLURM_NTASKS": "8",
        "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1", "SLURM_STEP_NODELIST": "gpu[07-08]",
        "SLURM_STEP_TASKS_PER_NODE": "4(x2)"}


def test_a_plain_process_is_alone():
    assert launch_of({}) == Launch(0, 1, 0)


def test_slurm_tasks_are_the_ranks_inside_a_job_step():
    launch = launch_of(STEP)
    assert (launch.rank, launch.world_size, launch.local_rank) == (3, 8, 1)
    assert launch.master == ("gpu07", port_of_job(STEP)) and launch.tasks_on_busiest_node == 4


def test_slurms_variables_outside_a_job_step_are_not_a_launch():
    """A batch script's own shell has SLURM_PROCID=0 and SLURM_NTASKS of the job: python there is one process."""
    batch = {k: v for k, v in STEP.items() if k != "SLURM_STEP_ID"}
    assert launch_of(batch) == Launch(0, 1, 0)


def test_torchruns_variables_win_where_both_are_set():
    both = {**STEP, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}
    assert launch_of(both) == Launch(1, 2, 1)


def test_an_explicit_master_address_and_port_win_over_the_node_list_and_the_job():
    launch = launch_of({**STEP, "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29999"})
    assert launch.master == ("10.0.0.5", 29999)


def test_a_step_with_other_tasks_than_the_job_asked_for_is_refused_in_one_line():
    with pytest.raises(LaunchError, match="this job step runs 8 task\\(s\\), the job asked for 4") as error:
        launch_of({**STEP, "RS_MTDF_TASKS": "4"})
    assert error.value.rank == 3  # only the first process prints it


@pytest.mark.parametrize(("nodes", "first"), [("gpu07", "gpu07"), ("gpu[07-08]", "gpu07"),
                                              ("node[3,5-9],login1", "node3"), ("a-b[001-004]", "a-b001")])
def test_the_master_is_the_first_node_of_the_list(nodes, first):
    assert first_host(nodes) == first


def test_tasks_per_node_expands_slurms_repeat_counts():
    assert tasks_per_node("2(x3),1") == [2, 2, 2, 1] and tasks_per_node("4") == [4]


def test_the_port_follows_the_job_and_changes_with_a_requeue():
    job = {"SLURM_JOB_ID": "4711"}
    port = port_of_job(job)
    assert 20000 <= port < 60000 and port_of_job(job) == port
    assert port_of_job({**job, "SLURM_RESTART_COUNT": "1"}) != port
    assert port_of_job({**job, "SLURM_ARRAY_JOB_ID": "4700", "SLURM_ARRAY_TASK_ID": "11"}) != port


@pytest.mark.parametrize(("codes", "expected"), [
    ([130, 130], (130, None)),   # Ctrl-C: every trainer saved and stopped
    ([130, 0], (130, None)),
    ([2, 2], (2, None)),         # a one-line error the trainer printed
])
def test_the_launcher_ends_with_the_trainers_outcome_and_no_words_of_its_own(codes, expected):
    assert outcome(codes) == expected


def test_a_trainer_that_crashed_or_was_killed_is_one_line():
    code, line = outcome([0, -9])
    assert code == 1 and line == "error: a training process was killed by SIGKILL; its output above says why"
    assert outcome([1, 0])[1] == "error: a training process exited with status 1; its output above says why"
