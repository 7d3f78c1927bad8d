"""The pure domain core: state, transitions and categorisation. No broker here."""

from worker.domain.inbox import Inbox
from worker.domain.state import Account, Conversation, State

__all__ = ["Account", "Conversation", "Inbox", "State"]
