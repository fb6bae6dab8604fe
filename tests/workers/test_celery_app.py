"""The Celery app's contract: broker from the environment (a server-free default), control tasks routed
to the control queue under stable names, JSON only, results ignored."""

from __future__ import annotations

from pathlib import Path

from workers.app import VALIDATE_FILE_TASK, broker_settings, create_app, route_task


def test_default_broker_is_the_filesystem_under_tailor_home(tmp_path: Path) -> None:
    conf = broker_settings({"TAILOR_HOME": str(tmp_path)})
    assert conf["broker_url"] == "filesystem://"
    options = conf["broker_transport_options"]
    assert options["data_folder_in"] == options["data_folder_out"] == str(tmp_path / "broker" / "queues")
    assert Path(options["data_folder_in"]).is_dir() and Path(options["control_folder"]).is_dir()


def test_broker_url_from_the_environment_wins(tmp_path: Path) -> None:
    conf = broker_settings(
        {"CELERY_BROKER_URL": "redis://redis.internal:6379/0", "TAILOR_HOME": str(tmp_path)}
    )
    assert conf == {"broker_url": "redis://redis.internal:6379/0", "broker_transport_options": {}}
    assert not (tmp_path / "broker").exists()


def test_control_tasks_are_routed_to_the_control_queue(monkeypatch) -> None:
    monkeypatch.setenv("TAILOR_CONTROL_QUEUE", "control-elsewhere")
    assert route_task(VALIDATE_FILE_TASK, [], {}, {}) == {"queue": "control-elsewhere"}
    monkeypatch.delenv("TAILOR_CONTROL_QUEUE")
    assert route_task(VALIDATE_FILE_TASK, [], {}, {}) == {"queue": "control"}
    assert route_task("tailor.gpu.train", [], {}, {}) is None


def test_messages_are_json_and_results_ignored(tmp_path: Path) -> None:
    app = create_app({"TAILOR_HOME": str(tmp_path)})
    assert app.conf.accept_content == ["json"] and app.conf.task_serializer == "json"
    assert app.conf.task_ignore_result is True and app.conf.result_backend is None


def test_validate_file_task_declares_name_limits_and_retries() -> None:
    from workers.control.tasks import validate_file

    assert validate_file.name == "tailor.control.validate_file" == VALIDATE_FILE_TASK
    assert validate_file.ignore_result and validate_file.acks_late and validate_file.reject_on_worker_lost
    assert 0 < validate_file.soft_time_limit < validate_file.time_limit
    assert validate_file.max_retries and validate_file.autoretry_for
