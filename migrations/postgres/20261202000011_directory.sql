-- The directory API deletes chat sessions: the records of the tokens minted for a deleted session
-- stay (they are the audit trail, and their revocations stay in the feed until they expire), so a
-- record no longer needs its session to exist. A tenant with records still cannot be deleted.
ALTER TABLE session_token_mints DROP CONSTRAINT session_token_mints_session_id_fkey;

-- The agents a token may talk to, as `,101,102,` (empty list: `,`), so that removing an agent
-- finds the live tokens that carry it. NULL for records from before.
ALTER TABLE session_token_mints ADD COLUMN allowed_agent_ids TEXT;
