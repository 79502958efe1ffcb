"""Writing the site: every page into a temp folder that then replaces ``--out`` whole
(``oig.files.replace_folder``), so a failure leaves the previous site as it was.

``--out`` is refused when it is the repository root (or holds it), or a folder with files in it that is
not a previous history site (one has the marker file ``MARKER``).
"""

from __future__ import annotations

from pathlib import Path

from oig import files
from oig.errors import OigError
from oig.history import pages
from oig.history.site import History, read_history

MARKER = ".oig-history"  # in every site this writes; a folder with it may be replaced


class SiteError(OigError):
    """The site cannot be written where it was asked to go."""



def check_out(out: Path, root: Path) -> None:
    """Refuse an --out that is (or holds) the repository, or a non-empty folder that is not a history site."""
    out_r, root_r = out.resolve(), root.resolve()
    if out_r == root_r or out_r in root_r.parents:
        raise SiteError(f"--out {out} is the repository (or a folder holding it): choose a folder of its own, "
                        "like --out site")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise SiteError(f"--out {out} is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise SiteError(f"--out {out} has files in it and is not a previous history site (no {MARKER} file): "
                        "choose an empty or new folder")


def build_site(root: Path, out: Path, *, branches: list[str] = (), repo_url: str | None = None) -> History:
    """Read the history of ``root`` and write the site to ``out`` (replacing a previous one); returns what was read."""
    root, out = Path(root), Path(out)
    check_out(out, root)
    history = read_history(root, branches=list(branches), repo_url=repo_url)
    written = {"index.html": pages.index_page(history), "bugs.html": pages.bugs_page(history),
               "slices.html": pages.slices_page(history), MARKER: "oig history site; `oig history --out` may replace this folder\n"}
    for run in history.runs:
        written[run.page] = pages.run_page(history, run)

    def write(tmp: Path) -> None:
        (tmp / "runs").mkdir(parents=True)
        for name, content in written.items():
            (tmp / name).write_text(content, encoding="utf-8")

    try:
        files.replace_folder(out, write)
    except OSError as exc:
        raise SiteError(f"cannot write the site to {out}: {exc.strerror or exc}") from None
    return history
