"""SQLModel tables. Importing this package registers every table on ``SQLModel.metadata``."""

from sqlmodel import SQLModel

from models.accounts import EmailAccount, FolderState
from models.base import ENCRYPTED_COLUMNS, new_id, normalize_email, utcnow
from models.conversations import AccountMember, Conversation, ConversationKey
from models.crm import CRM_TABLES, ENTITY_TYPES, Contact, CrmAccount, Lead, Opportunity, User
from models.emails import Document, Email, EmailAddress, EmailLink, EmailLocation, FlagChange
from models.notifications import Notification
from models.notion import NotionConnection, NotionSave
from models.oauth import OAuthFlow, OAuthGrant
from models.org import ApiKey, Organization
from models.outbound import Delivery, Outbox, Suppression
from models.privacy import ErasedMessage, PrivacyJob
from models.runtime import IdleWatcher, RelinkRequest, SchedulerHeartbeat, SelfTestRun
from models.search import EmailSearch
from models.sentiment import AccountRisk, EmailSentiment
from models.templates import Template
from models.tracking import TrackedLink, TrackingEvent
from models.webhooks import WebhookDelivery, WebhookEndpoint, WebhookEvent

metadata = SQLModel.metadata

__all__ = [
    "CRM_TABLES",
    "ENCRYPTED_COLUMNS",
    "ENTITY_TYPES",
    "AccountMember",
    "AccountRisk",
    "ApiKey",
    "Contact",
    "Conversation",
    "ConversationKey",
    "CrmAccount",
    "Delivery",
    "Document",
    "Email",
    "EmailAccount",
    "EmailAddress",
    "EmailLink",
    "EmailLocation",
    "EmailSentiment",
    "ErasedMessage",
    "EmailSearch",
    "FlagChange",
    "FolderState",
    "IdleWatcher",
    "Lead",
    "NotionConnection",
    "NotionSave",
    "Notification",
    "OAuthFlow",
    "OAuthGrant",
    "Opportunity",
    "Organization",
    "Outbox",
    "PrivacyJob",
    "RelinkRequest",
    "SchedulerHeartbeat",
    "SelfTestRun",
    "Suppression",
    "Template",
    "TrackedLink",
    "TrackingEvent",
    "User",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEvent",
    "metadata",
    "new_id",
    "normalize_email",
    "utcnow",
]
