-- The TLS profile a registered participant's calls use: a directory of that name under the
-- coordinator's TCC_PARTICIPANT_TLS_PROFILES_DIR (its CA bundle and client certificate).
-- The profile names files on the coordinators' disks, never their contents: no key is ever
-- in the log.
ALTER TABLE tcc_participants
    ADD COLUMN tls_profile text
        CHECK (tls_profile ~ '^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$' AND tls_profile <> 'default');
