"""Versioned schema migrations: one source for both backends, each entry applied once, in order.

The text is SQL common to SQLite and PostgreSQL with a few tokens the dialect fills in
(proxy.store.dialect.Dialect.render): {ID} an auto-assigned 64-bit primary key, {REAL} a float,
{BLOB} bytes, {BIGINT} a 64-bit integer, {CI:expr} an index key matched without case,
{ONCE:expr} an expression in a unique index, {ROWID} a row's insertion order where the old SQLite
schema kept no other.
"""

MIGRATIONS: list[str] = [
    # 1: the bounce log of DESIGN.md
    """
    CREATE TABLE messages (
        id             TEXT PRIMARY KEY,
        created_at     {REAL} NOT NULL,
        client_peer    TEXT NOT NULL DEFAULT '',
        client_user    TEXT,
        sender         TEXT NOT NULL DEFAULT '',
        header_from    TEXT,
        message_id     TEXT,
        subject        TEXT,
        upstream_id    TEXT,
        verp_token     TEXT,
        size           INTEGER NOT NULL DEFAULT 0,
        status         TEXT NOT NULL,
        upstream_reply TEXT NOT NULL DEFAULT '',
        send_failure   TEXT
    );
    CREATE INDEX messages_created ON messages(created_at);
    CREATE INDEX messages_upstream ON messages(upstream_id);
    CREATE INDEX messages_msgid ON messages(message_id);

    CREATE TABLE recipients (
        message_id TEXT NOT NULL REFERENCES messages(id),
        address    TEXT NOT NULL,
        status     TEXT NOT NULL,
        reply      TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (message_id, address)
    );
    CREATE INDEX recipients_address ON recipients(address);

    CREATE TABLE inbound (
        id             {ID},
        received_at    {REAL} NOT NULL,
        peer           TEXT NOT NULL DEFAULT '',
        mail_from      TEXT NOT NULL DEFAULT '',
        rcpt_tos       TEXT NOT NULL DEFAULT '',
        raw            {BLOB} NOT NULL,
        sha256         TEXT NOT NULL,
        state          TEXT NOT NULL DEFAULT 'pending',
        parser_version TEXT,
        kind           TEXT,
        format         TEXT,
        error          TEXT
    );
    CREATE INDEX inbound_sha ON inbound(sha256);
    CREATE INDEX inbound_state ON inbound(state);

    CREATE TABLE events (
        id             {ID},
        at             {REAL} NOT NULL,
        message_id     TEXT REFERENCES messages(id),
        recipient      TEXT,
        source         TEXT NOT NULL,
        kind           TEXT NOT NULL,
        bounce_type    TEXT NOT NULL,
        reason         TEXT NOT NULL,
        status         TEXT,
        status_source  TEXT,
        smtp_code      INTEGER,
        diagnostic     TEXT,
        remote_mta     TEXT,
        reporting_mta  TEXT,
        correlation    TEXT NOT NULL,
        inbound_id     {BIGINT} REFERENCES inbound(id),
        evidence       TEXT NOT NULL DEFAULT '',
        feedback_type  TEXT,
        parser_version TEXT
    );
    -- a replayed or reparsed DSN adds nothing: one event per (inbound mail, recipient)
    CREATE UNIQUE INDEX events_once ON events(inbound_id, {ONCE:COALESCE(recipient, '')});
    CREATE INDEX events_at ON events(at);
    CREATE INDEX events_recipient ON events(recipient);
    CREATE INDEX events_message ON events(message_id);

    CREATE TABLE outbox (
        message_id TEXT PRIMARY KEY REFERENCES messages(id),
        raw        {BLOB} NOT NULL
    );
    """,
    # 2: acting on bounces (issue 6): the suppression list and paused sending identities
    """
    CREATE TABLE suppressions (
        scope        TEXT NOT NULL DEFAULT '',
        address      TEXT NOT NULL,
        reason       TEXT NOT NULL,
        kind         TEXT NOT NULL,
        source_event {BIGINT} REFERENCES events(id),
        created_at   {REAL} NOT NULL,
        expires_at   {REAL},
        seq          {BIGINT} NOT NULL,
        PRIMARY KEY (scope, address)
    );
    CREATE INDEX suppressions_seq ON suppressions(seq);
    CREATE TABLE paused_identities (
        identity  TEXT PRIMARY KEY,
        paused_at {REAL} NOT NULL,
        why       TEXT NOT NULL
    );
    """,
    # 3: addresses are looked up case-insensitively (correlation by recipient, CLI and API filters):
    # without these, every such lookup scanned the whole table
    """
    CREATE INDEX recipients_address_nocase ON recipients({CI:address});
    CREATE INDEX events_recipient_nocase ON events({CI:recipient});
    """,
    # 4: soft suppression (issue 10, section 5): an MTA's retries of one message count once; a retry
    # without a Message-ID gets a new one from the relay each time, so the client's bytes are hashed
    """
    ALTER TABLE messages ADD COLUMN content_sha256 TEXT;
    """,
    # issue 10: nothing silent about a hostile report. How many addresses it named that the message its
    # evidence identified was never sent to (foreign_recipients), a sentence saying so (flag), and
    # which parse limit cut the mail, at N of M (truncated)
    """
    ALTER TABLE inbound ADD COLUMN foreign_recipients INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE inbound ADD COLUMN flag TEXT;
    ALTER TABLE inbound ADD COLUMN truncated TEXT;
    """,
    # issue 11: what each event's verdict was made from, so that `reparse --classify-only` makes it
    # again and `bounces --explain` can say why: the SMTP stage it took into account (RCPT, DATA, MAIL,
    # HELO, CONN), the DSN Action, and the classifier step and rule that decided the reason
    """
    ALTER TABLE events ADD COLUMN smtp_command TEXT;
    ALTER TABLE events ADD COLUMN action TEXT;
    ALTER TABLE events ADD COLUMN decided_by TEXT;
    """,
    # issue 12: one name per id. `relay_id` is always the relay's id of a message (messages.id),
    # `message_id` always the client's Message-ID header; recipients keep their order in a column of
    # their own (PostgreSQL has no rowid)
    """
    ALTER TABLE events RENAME COLUMN message_id TO relay_id;
    ALTER TABLE recipients RENAME COLUMN message_id TO relay_id;
    ALTER TABLE outbox RENAME COLUMN message_id TO relay_id;
    ALTER TABLE recipients ADD COLUMN position INTEGER NOT NULL DEFAULT 0;
    UPDATE recipients SET position = {ROWID};
    CREATE INDEX events_inbound ON events(inbound_id);
    """,
    # issue 14: SES's own notifications over SNS are recorded once: each one's keys (the SNS MessageId,
    # SES's feedbackId) are remembered, and a notification any of whose keys was seen adds nothing
    """
    CREATE TABLE notifications_seen (
        key   TEXT PRIMARY KEY,
        at    {REAL} NOT NULL
    );
    """,
    # issue 14: the webhooks' durable outbox. A row per notification and URL, written in the transaction of
    # the event it tells; key is the stable event id receivers de-duplicate on; a (url, address) queue
    # is delivered in id order; a lease lets several instances share the work without sending twice
    """
    CREATE TABLE webhook_outbox (
        id           {ID},
        key          TEXT NOT NULL,
        url          TEXT NOT NULL,
        type         TEXT NOT NULL,
        address      TEXT NOT NULL DEFAULT '',
        relay_id     TEXT,
        event_id     {BIGINT},
        snapshot     TEXT,
        created_at   {REAL} NOT NULL,
        state        TEXT NOT NULL DEFAULT 'pending',
        attempts     INTEGER NOT NULL DEFAULT 0,
        next_at      {REAL} NOT NULL,
        last_error   TEXT,
        delivered_at {REAL},
        lease_owner  TEXT,
        lease_until  {REAL}
    );
    CREATE UNIQUE INDEX webhook_outbox_once ON webhook_outbox(key, url);
    CREATE INDEX webhook_outbox_due ON webhook_outbox(state, next_at);
    CREATE INDEX webhook_outbox_queue ON webhook_outbox(url, address, state, id);
    """,
    # issue 16: spool mode. A message the client was told 250 for waits here until every recipient is sent, bounced,
    # expired or deleted; then its rows go (the bounce log keeps the story). Per-recipient state, so that after a
    # partial acceptance only the recipients still pending are sent again; a lease lets several instances drain
    # one spool without sending a message twice
    """
    CREATE TABLE spool (
        relay_id     TEXT PRIMARY KEY,
        created_at   {REAL} NOT NULL,
        sender       TEXT NOT NULL DEFAULT '',
        mail_options TEXT NOT NULL DEFAULT '',
        body         {BLOB} NOT NULL,
        size         {BIGINT} NOT NULL DEFAULT 0,
        state        TEXT NOT NULL DEFAULT 'queued',
        attempts     INTEGER NOT NULL DEFAULT 0,
        next_at      {REAL} NOT NULL,
        expires_at   {REAL} NOT NULL,
        last_error   TEXT,
        held_reason  TEXT,
        lease_owner  TEXT,
        lease_until  {REAL}
    );
    CREATE INDEX spool_due ON spool(state, next_at);
    CREATE TABLE spool_recipients (
        relay_id   TEXT NOT NULL,
        address    TEXT NOT NULL,
        position   INTEGER NOT NULL DEFAULT 0,
        state      TEXT NOT NULL DEFAULT 'pending',
        attempts   INTEGER NOT NULL DEFAULT 0,
        last_reply TEXT,
        PRIMARY KEY (relay_id, address)
    );
    """,
    # issue 15: every lookup of a recipient's address ignores case (migration 3's index serves it); the
    # exact-match index of migration 1 served none and cost each in-flight record a page of its own
    """
    DROP INDEX recipients_address;
    """,
]
