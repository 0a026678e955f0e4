-- Mails the notify sample sent: one per message step, written in the transaction that holds
-- the step's barrier row, once the SMTP server accepted the mail.
CREATE TABLE mails (
    message_id text PRIMARY KEY,  -- deterministic: made from the gid and the branch id
    gid        text NOT NULL,
    branch_id  text NOT NULL,
    recipient  text NOT NULL,
    subject    text NOT NULL,
    sent_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (gid, branch_id)
);
