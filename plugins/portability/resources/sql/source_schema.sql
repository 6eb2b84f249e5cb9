-- Reference source schema of an email service provider (SPEC §2).
-- Every table carries account_id; columns the export must never read are
-- marked "secret" in their comments.

CREATE TABLE IF NOT EXISTS accounts (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    name        text NOT NULL,
    company     text,
    owner_email text NOT NULL,
    country     text CHECK (country ~ '^[A-Z]{2}$'),
    region      text NOT NULL CHECK (region IN ('us', 'eu')),
    plan        text NOT NULL,
    address     jsonb,
    vat_number  text,
    created_at  timestamptz NOT NULL,
    closed_at   timestamptz
);

CREATE TABLE IF NOT EXISTS users (
    id            bigint PRIMARY KEY,
    account_id    text NOT NULL REFERENCES accounts (id),
    email         text NOT NULL,
    full_name     text,
    role          text NOT NULL,
    password_hash text NOT NULL,          -- secret
    mfa_secret    text,                   -- secret
    created_at    timestamptz NOT NULL,
    last_login_at timestamptz
);

CREATE TABLE IF NOT EXISTS api_keys (
    id           bigint PRIMARY KEY,
    account_id   text NOT NULL REFERENCES accounts (id),
    name         text NOT NULL,
    key_prefix   text NOT NULL,
    key_hash     text NOT NULL,           -- secret
    scopes       text[] NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL,
    last_used_at timestamptz,
    revoked_at   timestamptz
);

CREATE TABLE IF NOT EXISTS domains (
    id                   bigint PRIMARY KEY,
    account_id           text NOT NULL REFERENCES accounts (id),
    name                 text NOT NULL,
    state                text NOT NULL,
    dkim_selector        text,
    dkim_public_key      text,
    dkim_private_key     text,            -- secret
    spf_record           text,
    dmarc_record         text,
    tracking_host        text,
    open_tracking        boolean NOT NULL DEFAULT false,
    click_tracking       boolean NOT NULL DEFAULT false,
    unsubscribe_tracking boolean NOT NULL DEFAULT false,
    created_at           timestamptz NOT NULL,
    verified_at          timestamptz
);

CREATE TABLE IF NOT EXISTS lists (
    id          bigint PRIMARY KEY,
    account_id  text NOT NULL REFERENCES accounts (id),
    name        text NOT NULL,
    address     text NOT NULL,
    description text,
    created_at  timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS contacts (
    id         bigint PRIMARY KEY,
    account_id text NOT NULL REFERENCES accounts (id),
    email      text NOT NULL,
    full_name  text,
    properties jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS list_members (
    list_id         bigint NOT NULL REFERENCES lists (id),
    contact_id      bigint NOT NULL REFERENCES contacts (id),
    account_id      text NOT NULL REFERENCES accounts (id),
    subscribed      boolean NOT NULL,
    subscribed_at   timestamptz,
    unsubscribed_at timestamptz,
    vars            jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (list_id, contact_id)
);

CREATE TABLE IF NOT EXISTS templates (
    id          bigint PRIMARY KEY,
    account_id  text NOT NULL REFERENCES accounts (id),
    name        text NOT NULL,
    description text,
    category    text,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS template_versions (
    id          bigint PRIMARY KEY,
    template_id bigint NOT NULL REFERENCES templates (id),
    account_id  text NOT NULL REFERENCES accounts (id),
    tag         text NOT NULL,
    engine      text NOT NULL,
    subject     text,
    html        text,
    text_body   text,
    active      boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS campaigns (
    id           bigint PRIMARY KEY,
    account_id   text NOT NULL REFERENCES accounts (id),
    name         text NOT NULL,
    subject      text,
    from_address text,
    list_id      bigint REFERENCES lists (id),
    template_id  bigint REFERENCES templates (id),
    status       text NOT NULL,
    tags         text[] NOT NULL DEFAULT '{}',
    scheduled_at timestamptz,
    sent_at      timestamptz,
    created_at   timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS suppressions (
    id         bigint PRIMARY KEY,
    account_id text NOT NULL REFERENCES accounts (id),
    kind       text NOT NULL CHECK (kind IN ('bounce', 'unsubscribe', 'complaint', 'allowlist')),
    address    text NOT NULL,
    domain     text,                      -- null = account-wide
    code       text,
    reason     text,
    tags       text[] NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS webhooks (
    id          bigint PRIMARY KEY,
    account_id  text NOT NULL REFERENCES accounts (id),
    event       text NOT NULL,
    url         text NOT NULL,
    signing_key text NOT NULL,            -- secret
    created_at  timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS messages (
    id           bigint PRIMARY KEY,
    account_id   text NOT NULL REFERENCES accounts (id),
    campaign_id  bigint REFERENCES campaigns (id),    -- null for transactional mail
    contact_id   bigint REFERENCES contacts (id),     -- null when the recipient is not a contact
    recipient    text NOT NULL,                       -- the address it was sent to
    from_address text NOT NULL,
    subject      text,
    message_id   text NOT NULL,                       -- the RFC 5322 Message-ID
    tags         text[] NOT NULL DEFAULT '{}',
    status       text NOT NULL CHECK (status IN ('queued', 'sent', 'delivered', 'bounced', 'failed')),
    size_bytes   integer,
    sent_at      timestamptz,
    html         text,                                -- null once the content's retention has passed
    text_body    text
);

CREATE TABLE IF NOT EXISTS events (
    id          bigint PRIMARY KEY,
    account_id  text NOT NULL REFERENCES accounts (id),
    message_id  bigint NOT NULL REFERENCES messages (id),  -- messages.id, not the Message-ID header
    kind        text NOT NULL CHECK (kind IN ('delivered', 'opened', 'clicked', 'bounced', 'complained',
                                              'unsubscribed', 'failed')),
    recipient   text NOT NULL,
    url         text,                                  -- for clicks
    user_agent  text,
    ip          inet,
    reason      text,                                  -- for bounces and failures
    occurred_at timestamptz NOT NULL
);

-- Every export query filters on account_id and walks by primary key.
CREATE INDEX IF NOT EXISTS users_account_idx             ON users (account_id, id);
CREATE INDEX IF NOT EXISTS api_keys_account_idx          ON api_keys (account_id, id);
CREATE INDEX IF NOT EXISTS domains_account_idx           ON domains (account_id, id);
CREATE INDEX IF NOT EXISTS lists_account_idx             ON lists (account_id, id);
CREATE INDEX IF NOT EXISTS contacts_account_idx          ON contacts (account_id, id);
CREATE INDEX IF NOT EXISTS list_members_account_idx      ON list_members (account_id, list_id, contact_id);
CREATE INDEX IF NOT EXISTS templates_account_idx         ON templates (account_id, id);
CREATE INDEX IF NOT EXISTS template_versions_account_idx ON template_versions (account_id, id);
CREATE INDEX IF NOT EXISTS campaigns_account_idx         ON campaigns (account_id, id);
CREATE INDEX IF NOT EXISTS suppressions_account_idx      ON suppressions (account_id, id);
CREATE INDEX IF NOT EXISTS webhooks_account_idx          ON webhooks (account_id, id);
CREATE INDEX IF NOT EXISTS messages_account_idx          ON messages (account_id, id);
CREATE INDEX IF NOT EXISTS events_account_idx            ON events (account_id, id);

-- One data subject's export is index lookups by address (matched case-insensitively), never a scan:
-- their contacts and suppressions, the memberships of those contacts, the messages sent to the
-- address and the events of those messages.
CREATE INDEX IF NOT EXISTS contacts_subject_idx          ON contacts (account_id, lower(email));
CREATE INDEX IF NOT EXISTS suppressions_subject_idx      ON suppressions (account_id, lower(address));
CREATE INDEX IF NOT EXISTS list_members_contact_idx      ON list_members (account_id, contact_id);
CREATE INDEX IF NOT EXISTS messages_subject_idx          ON messages (account_id, lower(recipient));
CREATE INDEX IF NOT EXISTS events_message_idx            ON events (account_id, message_id);
