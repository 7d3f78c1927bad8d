"""One error tree: every error a user can see names what was wrong and where."""


class InboxRulesError(Exception):
    """Root of every error this package raises on purpose."""


class RuleFileError(InboxRulesError):
    """A rule file that does not validate; it never goes live."""

    def __init__(self, problems: list["RuleProblem"]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class RuleProblem:
    """One precise complaint about a rule file: file, line and reason."""

    __slots__ = ("file", "line", "reason")

    def __init__(self, file: str, line: int | None, reason: str) -> None:
        self.file = file
        self.line = line
        self.reason = reason

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.reason}"

    def __repr__(self) -> str:
        return f"RuleProblem({str(self)!r})"


class SettingsError(InboxRulesError):
    """A setting the worker cannot start with (the message names its variable): stop at
    start with one line, not later with a traceback."""


class TransientError(InboxRulesError):
    """A failure that may pass (store busy, broker hiccup): retry with backoff."""


class StoreError(TransientError):
    """The state store could not commit; nothing of the batch may be acknowledged."""


class StoreConflictError(StoreError):
    """Another worker committed to the same store since we loaded it: reload, then retry."""


class StoreFencedError(StoreConflictError):
    """Another worker took a partition this batch touched (its epoch moved on): this
    worker no longer owns those accounts and must not commit or ack for them."""


class PublishRejectedError(TransientError):
    """The broker refused (nacked) a publish: the batch is retried, nothing is acknowledged."""


class DemoError(InboxRulesError):
    """The demo could not show an inbox (no broker, or no worker answering)."""


class UnknownRulesError(StoreError):
    """A rules version in force (or asked to be) whose files the store does not keep:
    no worker could ever load it, so it is not a failure to retry."""

    def __init__(self, version: str) -> None:
        super().__init__(f"no deployed rules version {version!r}")
        self.version = version
