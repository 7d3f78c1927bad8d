"""The pure domain core: state, transitions and categorisation. No broker, no store."""

from worker.domain.account import AccountState, AccountWrite
from worker.domain.categoriser import Categoriser
from worker.domain.inbox import Inbox
from worker.domain.reading import categories_of
from worker.domain.rules import Rules
from worker.domain.state import Account, Conversation
from worker.domain.updates import Update

__all__ = ["Account", "AccountState", "AccountWrite", "Categoriser", "Conversation", "Inbox",
           "Rules", "Update", "categories_of"]
