"""The compatibility corpus in CI: every real file runs as written or is refused for something ftl does not have
(never unclear, a traceback or silently wrong), the corpus is as wide as the issue asks, and docs/compat.md is the
table this run produces."""

import pytest

from tests.compat import run as corpus


@pytest.fixture(scope="module")
def outcomes():
    return corpus.with_data_dir(corpus.run)


def test_every_file_runs_as_written_or_is_refused_with_its_fix(outcomes):
    assert corpus.wandb_oracle() is not None, "W&B's sweeps package (the oracle) is installed by scripts/setup.sh"
    bad = [f"{o.file}: {o.outcome}: {o.detail}" for o in outcomes if o.outcome not in corpus.GOOD]
    assert not bad, "\n".join(bad)


def test_the_corpus_is_wide_and_from_distinct_repositories():
    sources = corpus.sources()
    wandb = {s["repo"] for s in sources if s["kind"] == "wandb"}
    launchers = {s["repo"] for s in sources if s["kind"] in ("hydra", "submitit")}
    assert len(wandb) >= 20 and len(launchers) >= 10, (len(wandb), len(launchers))
    assert all(s.get("license") and s.get("url", "").startswith("https://github.com/") for s in sources)
    assert all((corpus.CORPUS / s["file"]).is_file() for s in sources)


def test_docs_show_what_this_run_shows(outcomes):
    assert corpus.summary(outcomes) in corpus.DOC.read_text(), "run `python -m tests.compat.run --write`"
