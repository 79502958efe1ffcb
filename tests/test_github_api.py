"""The GitHub REST client against a local server: pagination, retries, errors, labels, comments."""

from __future__ import annotations

import random

import pytest
from fake_github import FakeGitHub

from oig import files
from oig.bugs.github_api import GitHub, GitHubError, _next_link, check_repo

TOKEN = "ghs_test_token"


@pytest.fixture
def fake():
    with FakeGitHub(token=TOKEN) as gh:
        yield gh


class Ceiling:
    """The jitter at its bound: the waits are backoff_delay's longest, 1, 2, 4, ... s."""

    def uniform(self, low: float, high: float) -> float:
        return high


def client(fake: FakeGitHub, **kw) -> GitHub:
    sleeps: list[float] = []
    gh = GitHub(fake.repo, TOKEN, api_url=fake.url, sleep=sleeps.append, rng=Ceiling(), **kw)
    gh.sleeps = sleeps  # type: ignore[attr-defined]
    return gh


def test_token_from_env_and_headers(fake, monkeypatch):
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    monkeypatch.setenv("GITHUB_API_URL", fake.url)
    fake.add_issue(1, "body")
    with GitHub(fake.repo) as gh:
        assert gh.issue(1)["number"] == 1
    headers = fake.requests[-1].headers
    assert headers["authorization"] == f"Bearer {TOKEN}"
    assert headers["accept"] == "application/vnd.github+json"
    assert headers["x-github-api-version"] == "2022-11-28"


def test_open_issues_paginates_and_skips_pull_requests(fake):
    fake.per_page_cap = 2  # five bugs and a pull request over three pages
    for n in range(1, 6):
        fake.add_issue(n, f"body {n}")
    fake.add_issue(6, "a PR", pull_request=True)
    fake.add_issue(7, "not a bug", labels=("question",))
    fake.add_issue(8, "closed", state="closed")
    with client(fake) as gh:
        issues = gh.open_issues(label="bug")
    assert [i["number"] for i in issues] == [1, 2, 3, 4, 5]
    pages = [r for r in fake.requests if r.path.endswith("/issues")]
    assert len(pages) == 3
    assert pages[0].query["labels"] == "bug" and pages[0].query["state"] == "open"
    assert pages[1].query["page"] == "2" and pages[1].query["labels"] == "bug"


def test_next_link_parsing():
    header = '<https://api.github.com/x?page=2>; rel="next", <https://api.github.com/x?page=5>; rel="last"'
    assert _next_link(header) == "https://api.github.com/x?page=2"
    assert _next_link('<https://api.github.com/x?page=5>; rel="last"') is None
    assert _next_link(None) is None


def test_retries_server_errors_with_backoff(fake):
    fake.add_issue(1, "body")
    fake.fail_next(502, times=2)
    with client(fake) as gh:
        assert gh.issue(1)["number"] == 1
        assert gh.sleeps == [1.0, 2.0]


def test_the_waits_are_jittered_below_a_doubling_bound(fake):
    fake.add_issue(1, "body")
    fake.fail_next(502, times=3)
    sleeps: list[float] = []
    with GitHub(fake.repo, TOKEN, api_url=fake.url, sleep=sleeps.append, rng=random.Random(7)) as gh:
        assert gh.issue(1)["number"] == 1
    assert len(sleeps) == 3 and all(0 <= s <= 2.0**n for n, s in enumerate(sleeps))
    same = random.Random(7)  # the one formula, oig.files.backoff_delay, with the same draws
    assert sleeps == [files.backoff_delay(n, rng=same) for n in range(3)]


def test_retries_the_secondary_rate_limit_honouring_retry_after(fake):
    fake.add_issue(1, "body")
    fake.fail_next(403, headers={"Retry-After": "3"},
                   body={"message": "You have exceeded a secondary rate limit."})
    fake.fail_next(429, headers={"Retry-After": "1"})
    with client(fake) as gh:
        gh.create_comment(1, "hello")
        assert gh.sleeps == [3.0, 1.0]
    assert fake.comments_on(1)[0]["body"] == "hello"


def test_gives_up_after_the_retries_with_a_clear_message(fake):
    fake.fail_next(500, times=10)
    with client(fake, max_retries=2) as gh, pytest.raises(GitHubError, match=r"kept failing after 3 tries \(HTTP 500"):
        gh.issue(1)
    assert len(fake.requests) == 3


def test_a_long_rate_limit_wait_fails_at_once(fake):
    fake.fail_next(403, headers={"Retry-After": "3600"}, body={"message": "secondary rate limit"})
    with client(fake) as gh, pytest.raises(GitHubError, match="wait 3600 s"):
        gh.issue(1)


def test_bad_token_is_a_clear_error_without_the_token(fake):
    secret = "ghs_wrong_secret_value"
    gh = GitHub(fake.repo, secret, api_url=fake.url, sleep=lambda s: None)
    with gh, pytest.raises(GitHubError) as err:
        gh.create_comment(1, "x")
    assert "check GITHUB_TOKEN" in str(err.value) and "HTTP 401" in str(err.value)
    assert secret not in str(err.value)


def test_missing_issue_and_validation_errors(fake):
    with client(fake) as gh:
        assert gh.issue(99) is None
        with pytest.raises(GitHubError, match="not found") as err:
            gh.create_comment(99, "x")
        assert err.value.status == 404
        fake.add_issue(1, "body")
        with pytest.raises(GitHubError, match="Body is too long"):
            gh.create_comment(1, "x" * 70000)


def test_non_json_answer_is_an_error(fake):
    fake.fail_next(200, body="not json at all")  # the fake sends this JSON-encoded: a string, not a list
    with client(fake) as gh, pytest.raises(GitHubError, match="expected a list"):
        gh.open_issues()


def test_unreachable_host_is_a_clear_error():
    gh = GitHub("octo/oig", TOKEN, api_url="http://127.0.0.1:9", sleep=lambda s: None, max_retries=1)
    with gh, pytest.raises(GitHubError, match="could not reach 127.0.0.1:9"):
        gh.issue(1)


def test_refuses_to_send_the_token_to_another_host(fake):
    with client(fake) as gh, pytest.raises(GitHubError, match="refusing to send the token"):
        gh.request("GET", "https://evil.example/repos/x", "a test")


def test_repo_names_are_checked():
    assert check_repo("octo-org/my.repo_1") == "octo-org/my.repo_1"
    for bad in ("octo", "octo/oig/x", "../etc", "octo/..", "a b/c", ""):
        with pytest.raises(GitHubError, match="not a repository name"):
            check_repo(bad)


def test_labels_are_created_once_and_removed_quietly(fake):
    fake.add_issue(1, "body", labels=())
    with client(fake) as gh:
        assert gh.ensure_label("needs-info", "fbca04", "desc") is True
        assert gh.ensure_label("needs-info", "fbca04", "desc") is False
        gh.add_labels(1, ["needs-info"])
        assert fake.labels_of(1) == ["needs-info"]
        gh.remove_label(1, "needs-info")
        gh.remove_label(1, "needs-info")  # already gone: not an error
    assert fake.labels_of(1) == []
    assert fake.labels["needs-info"]["color"] == "fbca04"


def test_upsert_comment_updates_only_its_own_comment(fake):
    fake.add_issue(1, "body")
    marker = "<!-- oig-test -->"
    fake.add_comment(1, marker + " forged by a user")  # someone pasting the marker is not the bot
    with client(fake) as gh:
        action, first = gh.upsert_comment(1, marker, marker + "\none")
        assert action == "created"
        action, second = gh.upsert_comment(1, marker, marker + "\ntwo")
        assert action == "updated" and second["id"] == first["id"]
        assert gh.upsert_comment(1, marker, marker + "\ntwo")[0] == "unchanged"
    bodies = [c["body"] for c in fake.comments_on(1)]
    assert bodies == [marker + " forged by a user", marker + "\ntwo"]


def test_upsert_comment_posts_once_when_a_post_that_worked_answers_502(fake):
    fake.add_issue(1, "body")
    marker = "<!-- oig-test -->"
    fake.add_comment(1, marker + " forged by a user")
    fake.fail_next(502, method="POST", path_contains="/comments", after_success=True)
    with client(fake) as gh:
        action, comment = gh.upsert_comment(1, marker, marker + "\none")
        assert action == "created" and comment["body"] == marker + "\none"
        assert gh.sleeps == [1.0]
    assert [c["body"] for c in fake.comments_on(1)] == [marker + " forged by a user", marker + "\none"]
    # The comments were listed again before the retry, and nothing was posted a second time.
    assert [r.method for r in fake.requests] == ["GET", "POST", "GET"]


def test_upsert_comment_retries_a_post_that_failed(fake):
    fake.add_issue(1, "body")
    marker = "<!-- oig-test -->"
    fake.fail_next(502, method="POST", times=2)
    with client(fake) as gh:
        assert gh.upsert_comment(1, marker, marker + "\none")[0] == "created"
        assert gh.sleeps == [1.0, 2.0]
    assert [c["body"] for c in fake.comments_on(1)] == [marker + "\none"]
    fake.fail_next(500, method="POST", times=10)
    with client(fake, max_retries=2) as gh, pytest.raises(GitHubError, match=r"HTTP 500.*\(3 tries\)"):
        gh.upsert_comment(1, "<!-- other -->", "<!-- other -->\nx")
    assert len(fake.comments_on(1)) == 1


def test_the_fake_can_carry_out_a_post_then_answer_502(fake):
    # What makes a blind retry post twice, and why upsert_comment lists the comments again first.
    fake.add_issue(1, "body")
    fake.fail_next(502, method="POST", after_success=True)
    with client(fake) as gh:
        gh.create_comment(1, "hello")
    assert [c["body"] for c in fake.comments_on(1)] == ["hello", "hello"]
