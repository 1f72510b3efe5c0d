from pathlib import Path

from rxslurm.daemon.projects.roles import ALLOWED, Action, Role, matrix_markdown, may

DOC = Path(__file__).parent.parent / "docs" / "roles.md"


def test_roles_doc_shows_the_matrix_the_daemon_enforces() -> None:
    text = DOC.read_text()
    shown = text.split("<!-- matrix -->\n", 1)[1].split("<!-- /matrix -->", 1)[0]
    assert shown == matrix_markdown(), (
        "docs/roles.md is out of date; regenerate the table between the matrix markers with "
        "rxslurm.daemon.projects.roles.matrix_markdown()"
    )


def test_owner_may_do_everything_and_viewer_only_view_and_read_logs() -> None:
    assert all(may(Role.OWNER, a) for a in Action)
    assert [a for a in Action if may(Role.VIEWER, a)] == [Action.VIEW, Action.LOGS]
    # Editors have write access to the workspace: they may build images from it and run
    # batch steps in the project's environment.
    assert [a for a in Action if may(Role.EDITOR, a)] == [
        Action.VIEW,
        Action.LOGS,
        Action.BUILD,
        Action.RUN,
    ]


def test_manager_rights_are_what_the_issue_names() -> None:
    manager = {a for a in Action if may(Role.MANAGER, a)}
    assert manager == {
        Action.VIEW,
        Action.LOGS,
        Action.START,
        Action.STOP,
        Action.SET_IMAGE,
        Action.EXEC,
        Action.BUILD,
        Action.RUN,
        Action.EXPORT,
        # Issue 17: owners and managers set the project's variables and secrets (exec sees them).
        Action.EDIT_ENV,
    }


def test_non_members_may_do_nothing() -> None:
    assert not any(may(None, a) for a in Action)
    assert set(ALLOWED) == set(Action)
