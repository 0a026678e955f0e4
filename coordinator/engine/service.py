"""The service layer: one method per operation of either API (and of the admin CLI).

Handlers parse a request, make one call here and render what comes back; every rule that is
not about HTTP lives here or below: who may see and move a transaction, where a service's
gids live, the participant URL policy and the limits, the repeat and stale-try rules of a
try, the decision with the options that come with it, operator actions (logged and counted
like everything else).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

import structlog

from coordinator import tracing
from coordinator.core import breaker, gids, kinds, states
from coordinator.core.apikeys import Principal
from coordinator.core.errors import (
    CircuitOpen,
    Conflict,
    DatabaseUnavailable,
    Forbidden,
    InvalidInput,
    NotFound,
)
from coordinator.core.records import (
    Backlog,
    Branch,
    CallResult,
    Event,
    ListFilter,
    NewBranch,
    NewParticipant,
    NewTransaction,
    OptionsUpdate,
    Overview,
    Participant,
    ParticipantUsage,
    Transaction,
    TransactionDetail,
    TryRecord,
    url_under,
)
from coordinator.core.states import (
    CancelReason,
    Decision,
    GlobalStatus,
    Judgement,
    Phase,
    Refusal,
    TransactionKind,
    TryReport,
    Verdict,
)
from coordinator.core.urlpolicy import ParticipantPolicy, PolicyError
from coordinator.engine.driver import PhaseDriver, TryOutcome
from coordinator.engine.recent import RecentTransactions
from coordinator.metrics import Metrics
from coordinator.settings import Settings
from coordinator.tlsfiles import profile_directory
from coordinator.txlog.interface import DEFAULT_EVENTS_PAGE, TransactionLog

log = structlog.get_logger(__name__)

# Transactions the overview lists under each kind of attention.
ATTENTION_LIMIT = 10
# The Participants page's window: calls, errors and latencies over the last 15 minutes.
USAGE_WINDOW_S = 900.0
# Events read at once when a whole timeline is read.
WHOLE_TIMELINE_PAGE = 1000


@dataclass(frozen=True, slots=True)
class BeginRequest:
    """A begin as a client asked for it, before the coordinator fills in the rest."""

    gid: str | None
    service: str | None
    metadata: dict[str, Any]
    timeout_s: float | None
    call_timeout_s: float | None
    # A digest of the request's own fields: a repeat must match it (plus the service).
    body_hash: str
    branches: tuple[NewBranch, ...] = ()
    auto: bool = False
    dialect: str = "tcc"
    options: dict[str, Any] | None = None
    kind: TransactionKind = TransactionKind.TCC


@dataclass(frozen=True, slots=True)
class Begun:
    detail: TransactionDetail
    created: bool


@dataclass(frozen=True, slots=True)
class TryResult:
    report: TryReport
    transaction_status: GlobalStatus
    branch: Branch
    reply: CallResult | None  # None when the answer came from the log (a repeat)


@dataclass(frozen=True, slots=True)
class Decided:
    """A decision asked for over DTM's API: refused or taken, and where it stands."""

    judgement: Judgement
    before: Transaction  # as the decision judged it (what a refusal speaks of)
    after: Transaction | None  # after a bounded wait for phase two, when asked to wait


class Coordinator:
    def __init__(
        self,
        txlog: TransactionLog,
        driver: PhaseDriver,
        settings: Settings,
        policy: ParticipantPolicy,
        metrics: Metrics,
    ) -> None:
        self.log = txlog
        self.driver = driver
        self.settings = settings
        self.policy = policy
        self.metrics = metrics
        self.limits = settings.limits
        self._recent = RecentTransactions(settings.recent_transactions_kept)

    # --- who may do what ------------------------------------------------------------

    def _namespace(self, caller: Principal) -> str | None:
        return caller.gid_namespace if self.settings.gid_namespaces else None

    def new_gid(self, caller: Principal) -> str:
        """A fresh gid, inside the caller's namespace when it has one."""
        return f"{self._namespace(caller) or ''}{gids.time_ordered_hex()}"

    def _gid_for_begin(self, caller: Principal, asked: str | None) -> str:
        """The gid asked for if it lies in the caller's namespace (so that no service can
        take, or learn of, another's gids), or a fresh one."""
        if asked is None:
            return self.new_gid(caller)
        prefix = self._namespace(caller)
        if prefix is not None and not (asked.startswith(prefix) and len(asked) > len(prefix)):
            raise InvalidInput(
                f"gid: the gids of service {prefix[:-1]!r} begin with {prefix!r} (each service"
                " has its own namespace); omit gid to have one generated"
            )
        return asked

    @staticmethod
    def _service_for_begin(caller: Principal, asked: str | None) -> str | None:
        """A service key begins transactions as itself; an admin may name any service."""
        if caller.is_admin:
            return asked
        if asked is not None and asked != caller.name:
            raise Forbidden(f"the key of {caller.name!r} cannot begin transactions as {asked!r}")
        return caller.name

    @staticmethod
    def _require_admin(caller: Principal, action: str) -> None:
        if not caller.is_admin:
            raise Forbidden(f"{action} needs an admin key")

    @staticmethod
    def _require_reader(caller: Principal, action: str) -> None:
        if not caller.reads_everything:
            raise Forbidden(f"{action} needs an admin or viewer key")

    @staticmethod
    def _require_writer(caller: Principal) -> None:
        if not caller.may_write:
            raise Forbidden("a viewer key may look at transactions but not change them")

    async def _owned(self, gid: str, caller: Principal) -> Transaction:
        """The transaction, if the caller may see it; another service's is simply not found
        (outside the caller's namespace without even asking the log)."""
        prefix = self._namespace(caller)
        if prefix is not None and not gid.startswith(prefix):
            raise NotFound(f"no transaction {gid!r}")
        txn = await self.log.get(gid)
        if not caller.may_see(txn.service):
            raise NotFound(f"no transaction {gid!r}")
        self._recent.remember(txn)
        return txn

    async def _known(self, gid: str, caller: Principal) -> Transaction:
        """_owned, for an operation that needs only what never changes while a transaction
        is trying (its owner, dialect, call timeout, options): a recent answer is used
        again. Its status may be old and its metadata left out (engine/recent.py)."""
        known = self._recent.recall(gid)
        if known is None:
            return await self._owned(gid, caller)
        prefix = self._namespace(caller)
        if (prefix is not None and not gid.startswith(prefix)) or not caller.may_see(known.service):
            raise NotFound(f"no transaction {gid!r}")
        return known

    def _resolved(self, branch: NewBranch, prefix: str = "") -> NewBranch:
        """The branch with its participant: the one it names (whose URLs fill in those it
        left out), else the one its URLs are under, if any is registered. Then the URL
        policy and the limits, on every way in."""
        registry = self.driver.participants
        if branch.participant is not None:
            registered = registry.get(branch.participant)
            if registered is None:
                raise InvalidInput(
                    f"{prefix}participant: no participant {branch.participant!r} is registered"
                    " (PUT /v1/participants/{name} registers one)"
                )
            branch = branch.with_participant(registered)
        else:
            found = registry.owner_of(branch.urls.values())
            if found is not None:
                branch = dataclasses.replace(branch, participant=found)
        self._check_branch(branch, prefix)
        return branch

    async def _refuse_if_open(self, branch: NewBranch) -> None:
        """A try the client runs itself to a participant whose circuit is open fails here,
        at its registration (the coordinator cannot hold back a call it does not make)."""
        if branch.participant is None:
            return
        admission = await self.driver.participants.admit(branch.participant, Phase.TRY)
        if admission.verdict is breaker.Verdict.HOLD:
            raise CircuitOpen(
                branch.participant, admission.reason or "circuit open", admission.retry_in_s
            )

    def _check_branch(self, branch: NewBranch, prefix: str = "") -> None:
        """The participant URL policy and the size limits, on every way in."""
        for field, url in branch.urls.items():
            try:
                self.policy.check_url(url)
            except PolicyError as exc:
                raise InvalidInput(f"{prefix}{field}: {exc}") from exc
        self.limits.check_branch(branch, prefix)

    # --- begin ---------------------------------------------------------------------------

    def _new_transaction(self, request: BeginRequest, caller: Principal) -> NewTransaction:
        self._require_writer(caller)
        service = self._service_for_begin(caller, request.service)
        branches = [self._resolved(b, f"branches.{i}.") for i, b in enumerate(request.branches)]
        query_url = (request.options or {}).get(kinds.QUERY_URL_OPTION)
        if isinstance(query_url, str):  # a prepared message's service, asked like a participant
            try:
                self.policy.check_url(query_url)
            except PolicyError as exc:
                raise InvalidInput(f"query_url: {exc}") from exc
        trace = tracing.current()  # the begin's span: the transaction's trace from now on
        new = NewTransaction(
            gid=self._gid_for_begin(caller, request.gid),
            service=service,
            metadata=dict(request.metadata),
            timeout_s=request.timeout_s or self.settings.default_timeout_s,
            call_timeout_s=request.call_timeout_s,
            request_hash=_digest(request.body_hash, service or ""),
            dialect=request.dialect,
            kind=request.kind,
            branches=branches,
            options=dict(request.options or {}),
            traceparent=trace.traceparent if trace else None,
            tracestate=trace.tracestate if trace else None,
        )
        self.limits.check_transaction(new)
        return new

    async def _begin(
        self, request: BeginRequest, caller: Principal
    ) -> tuple[TransactionDetail, bool]:
        await self.driver.participants.ensure_loaded()
        new = self._new_transaction(request, caller)
        detail, created = await self.log.begin(new)
        self._recent.remember(detail.transaction)
        if created:
            log.info("transaction_begun", gid=new.gid, timeout_s=new.timeout_s)
            self.metrics.began(new.dialect, new.kind)
        return detail, created

    async def begin(self, request: BeginRequest, caller: Principal) -> Begun:
        """Begin a transaction; with ``auto``, run its tries, decide, and wait (bounded)
        for phase two. An identical repeat answers what the log holds."""
        with tracing.span("tcc.begin", dialect=request.dialect, auto=request.auto) as span:
            detail, created = await self._begin(request, caller)
            tracing.annotate(span, gid=detail.transaction.gid, created=created)
            if created and request.auto:
                detail = await self._run_auto(detail)
            tracing.annotate(span, status=detail.transaction.status.value)
        return Begun(detail, created)

    async def prepare(self, request: BeginRequest, caller: Principal) -> tuple[Transaction, bool]:
        """DTM's prepare: a begin that answers the transaction alone."""
        with tracing.span("tcc.begin", dialect=request.dialect) as span:
            detail, created = await self._begin(request, caller)
            tracing.annotate(span, gid=detail.transaction.gid, created=created)
        return detail.transaction, created

    async def _run_auto(self, begun: TransactionDetail) -> TransactionDetail:
        """Every try at once, then the decision with their answers in one write, then phase
        two; the answer is put together from what the writes returned. Three statements on
        the happy path, two of them waiting for the disk."""
        txn = begun.transaction
        answers = await asyncio.gather(*(self.driver.call_try(txn, b) for b in begun.branches))
        tries = [
            TryRecord(b.branch_id, verdict, result.record)
            for b, (verdict, result) in zip(begun.branches, answers, strict=True)
        ]
        result, decided = await self.driver.decide_after_tries(txn, tries)
        if decided is None:
            if result.transaction.status is GlobalStatus.TRYING:
                await self._decide_beyond_the_fast_path(txn.gid)
            await self.driver.settle(txn.gid)
            return await self.log.detail(txn.gid)
        ended = await self.driver.wait_settled(txn.gid)
        if ended is None:  # later rounds ended it, or it still goes on (202)
            return await self.log.detail(txn.gid)
        events = [*begun.events, *decided.events, *ended.events]
        page = events[:DEFAULT_EVENTS_PAGE]
        more = len(events) > len(page)
        return TransactionDetail(ended.transaction, ended.branches, page, more_events=more)

    async def _decide_beyond_the_fast_path(self, gid: str) -> None:
        """Confirm as the general rules allow, else cancel saying why (e.g. another branch
        registered meanwhile has not been tried)."""
        result = await self.driver.decide(gid, Decision.CONFIRM, reason=None)
        refusal = result.judgement
        if refusal.verdict is Verdict.REFUSE:
            reason = (
                CancelReason.TIMEOUT.text()
                if refusal.refusal is Refusal.DEADLINE_PASSED
                else CancelReason.CONFIRM_REFUSED.text(refusal.reason)
            )
            await self.driver.decide(gid, Decision.CANCEL, reason=reason)

    # --- branches and tries ------------------------------------------------------------

    async def register_branch(
        self, gid: str, branch: NewBranch, caller: Principal
    ) -> tuple[Branch, bool]:
        """Register a branch whose try the client runs itself (/v1 branches, DTM)."""
        self._require_writer(caller)
        await self.driver.participants.ensure_loaded()
        branch = self._resolved(branch)
        self._only_tcc(await self._known(gid, caller))
        await self._refuse_if_open(branch)
        return await self._register(gid, branch)

    @staticmethod
    def _only_tcc(txn: Transaction) -> None:
        """A saga's or message's steps are all given when it begins."""
        if txn.kind is not TransactionKind.TCC:
            raise Conflict(
                f"transaction {txn.gid!r} is a {txn.kind.value}: its steps are given when it"
                " begins, no branch can be added"
            )

    async def _register(self, gid: str, branch: NewBranch) -> tuple[Branch, bool]:
        registered, created = await self.log.register_branch(
            gid, branch, self.settings.max_branches
        )
        if created:
            log.info("branch_registered", gid=gid, branch_id=branch.branch_id)
        return registered, created

    async def try_branch(self, gid: str, branch: NewBranch, caller: Principal) -> TryResult:
        """Register a branch and run its try; a failed try cancels the transaction.

        A repeat reports what the log knows without calling again, unless the first try's
        answer was never logged (its coordinator died mid-call) and it is older than a call
        can take: then it is run again, once.
        """
        self._require_writer(caller)
        await self.driver.participants.ensure_loaded()
        branch = self._resolved(branch)
        txn = await self._known(gid, caller)  # its status may be old: dialect, timeouts hold
        self._only_tcc(txn)
        registered, created = await self._register(gid, branch)
        if created:
            outcome: TryOutcome | None = await self.driver.run_try(txn, registered)
        else:
            txn = await self.log.get(gid)  # a repeat reports what the log holds now
            stale_after_s = self.driver.call_timeout(txn, registered) + 1.0
            claimed = await self.log.claim_stale_try(gid, branch.branch_id, stale_after_s)
            if claimed is not None:
                log.info("try_rerun", gid=gid, branch_id=branch.branch_id)
            outcome = await self.driver.run_try(txn, claimed) if claimed else None
        if outcome is None:
            report = states.recorded_try_report(registered.status, registered.last_http_status)
            return TryResult(report, txn.status, registered, None)
        status = GlobalStatus.TRYING  # the branch took the answer while trying
        if outcome.report in (TryReport.REFUSED, TryReport.FAILED):
            reason = CancelReason.TRY_FAILED.text(branch.branch_id)
            cancelled = await self.driver.decide(gid, Decision.CANCEL, reason=reason)
            status = cancelled.transaction.status
        elif outcome.report is not TryReport.TRIED:  # moved on before the answer: say where
            status = (await self.log.get(gid)).status
        return TryResult(outcome.report, status, outcome.branch, outcome.result)

    # --- decisions -------------------------------------------------------------------

    async def _decide_and_wait(
        self,
        gid: str,
        decision: Decision,
        reason: str | None,
        caller: Principal,
        actor: str | None = None,
    ) -> TransactionDetail:
        self._require_writer(caller)
        txn = await self._known(gid, caller)  # its kind never changes
        result = await self.driver.decide(gid, decision, reason=reason, actor=actor, kind=txn.kind)
        if result.judgement.verdict is Verdict.REFUSE:
            raise Conflict(result.judgement.reason or "refused")
        await self.driver.wait_settled(gid)
        return await self.log.detail(gid)

    async def confirm(self, gid: str, caller: Principal) -> TransactionDetail:
        """Decide confirm, then wait (bounded) for phase two; Conflict when refused."""
        return await self._decide_and_wait(gid, Decision.CONFIRM, None, caller)

    async def cancel(
        self,
        gid: str,
        caller: Principal,
        *,
        actor: str | None = None,
        reason: str | None = None,
    ) -> TransactionDetail:
        """Decide cancel. A client cancels its own (reason ``client``, with its words if it
        gives some); an operator (an admin, with ``actor``) cancels a trying transaction
        saying why, and the timeline records who."""
        if actor is None or not caller.is_admin:
            why = CancelReason.CLIENT.text(reason)
            return await self._decide_and_wait(gid, Decision.CANCEL, why, caller)
        why = CancelReason.OPERATOR.text(reason)
        detail = await self._decide_and_wait(gid, Decision.CANCEL, why, caller, actor=actor)
        self._audit("cancel", gid, actor or "?", reason=reason or "")
        return detail

    async def submit(
        self, gid: str, caller: Principal, options: OptionsUpdate | None, *, wait: bool
    ) -> Decided:
        """DTM's submit: confirm, with the options it carries set in the same database
        transaction as the decision."""
        if options is not None:
            self.limits.check_options(options.call_timeout_s, options.options)
        return await self._decide_dtm(gid, Decision.CONFIRM, None, caller, options, wait)

    async def abort(self, gid: str, caller: Principal, why: str | None, *, wait: bool) -> Decided:
        """DTM's abort: cancel, with the client's rollback reason."""
        reason = CancelReason.CLIENT.text(why)
        return await self._decide_dtm(gid, Decision.CANCEL, reason, caller, None, wait)

    async def _decide_dtm(
        self,
        gid: str,
        decision: Decision,
        reason: str | None,
        caller: Principal,
        options: OptionsUpdate | None,
        wait: bool,
    ) -> Decided:
        self._require_writer(caller)
        txn = await self._known(gid, caller)  # its kind never changes
        result = await self.driver.decide(
            gid, decision, reason=reason, options=options, kind=txn.kind
        )
        # As judged: the transaction the refusal speaks of, or the one just decided.
        before = result.transaction
        if result.judgement.verdict is Verdict.REFUSE or not wait:
            return Decided(result.judgement, before, None)
        ended = await self.driver.wait_written(gid)
        after = ended.transaction if ended is not None else await self.driver.wait_for(gid)
        return Decided(result.judgement, before, after)

    # --- sagas and messages -------------------------------------------------------------

    async def begin_saga(self, request: BeginRequest, caller: Principal, *, wait: bool) -> Begun:
        """Log a saga with its steps and its decision to run them, then run them; with
        ``wait``, until it has ended (bounded by TCC_CONFIRM_WAIT_S). An identical repeat
        answers what the log holds."""
        with tracing.span("tcc.begin", dialect=request.dialect, type=request.kind.value) as span:
            detail, created = await self._begin(request, caller)
            gid = detail.transaction.gid
            tracing.annotate(span, gid=gid, created=created)
            # A repeat finds it decided, unless the first request died between its two
            # writes: then the repeat decides it.
            undecided = detail.transaction.status in states.UNDECIDED_STATUSES
            if not (created or undecided):
                return Begun(detail, created)
            await self._go_forward(gid, request.kind)
            if wait:
                await self.driver.wait_settled(gid)
            detail = await self.log.detail(gid)
            tracing.annotate(span, status=detail.transaction.status.value)
        return Begun(detail, created)

    async def post_message(
        self, request: BeginRequest, caller: Principal, *, prepared: bool
    ) -> Begun:
        """Log a message with its steps: held until submitted when ``prepared``, else
        submitted at once (delivered in the background). Idempotent by gid."""
        if prepared:  # recovery asks about a prepared one, and sends an unprepared one
            request = dataclasses.replace(
                request, options={**(request.options or {}), kinds.PREPARED_OPTION: True}
            )
        with tracing.span("tcc.begin", dialect=request.dialect, type=request.kind.value) as span:
            detail, created = await self._begin(request, caller)
            gid = detail.transaction.gid
            tracing.annotate(span, gid=gid, created=created, prepared=prepared)
            undecided = detail.transaction.status in states.UNDECIDED_STATUSES
            if undecided and not prepared:  # new, or a repeat after a first request died
                await self._go_forward(gid, request.kind)
                detail = await self.log.detail(gid)
        return Begun(detail, created)

    async def _go_forward(
        self, gid: str, kind: TransactionKind, options: OptionsUpdate | None = None
    ) -> Decided:
        """A saga's or message's decision to run its steps (the same as a confirm)."""
        result = await self.driver.decide(
            gid, Decision.CONFIRM, reason=None, options=options, kind=kind
        )
        return Decided(result.judgement, result.transaction, None)

    async def decide_message(
        self, gid: str, decision: Decision, caller: Principal, *, reason: str | None = None
    ) -> TransactionDetail:
        """Submit (deliver) or abort (never deliver) a prepared message; a repeat of what
        was decided is no error. Conflict when refused, or when the gid is not a message.
        The message as it is then (an abort, which calls nobody, has ended)."""
        self._require_writer(caller)
        txn = await self._owned(gid, caller)
        if txn.kind is not TransactionKind.MSG:
            raise Conflict(f"transaction {gid!r} is a {txn.kind.value} transaction, not a message")
        why = CancelReason.CLIENT.text(reason) if decision is Decision.CANCEL else None
        result = await self.driver.decide(gid, decision, reason=why, kind=txn.kind)
        if result.judgement.verdict is Verdict.REFUSE:
            raise Conflict(result.judgement.reason or "refused")
        if decision is Decision.CANCEL:
            await self.driver.settle(gid)
        return await self.log.detail(gid)

    async def submit_dtm(
        self,
        request: BeginRequest,
        caller: Principal,
        options: OptionsUpdate | None,
        *,
        wait: bool,
    ) -> tuple[Decided, Transaction]:
        """DTM's submit of a saga or a message: a message prepared before is submitted, any
        other is logged with its steps and submitted at once. With ``wait`` (wait_result),
        until it has ended (bounded). The decision, and the transaction as it is then."""
        txn, created = await self._begin_or_find(request, caller)
        gid = txn.gid
        if txn.kind is not request.kind:
            kind = txn.kind.value
            raise Conflict(f"transaction {gid!r} is a {kind} transaction, not a {request.kind}")
        if options is not None:
            self.limits.check_options(options.call_timeout_s, options.options)
        decided = await self._go_forward(gid, request.kind, None if created else options)
        if not wait:
            return decided, decided.before
        await self.driver.wait_settled(gid)
        return decided, await self.log.get(gid)

    async def _begin_or_find(
        self, request: BeginRequest, caller: Principal
    ) -> tuple[Transaction, bool]:
        """The transaction a DTM submit names, and whether it was logged now (else: a
        prepared message, or a repeat, as the log holds it)."""
        if request.gid is not None:
            try:
                return await self._owned(request.gid, caller), False
            except NotFound:
                pass
        detail, created = await self._begin(request, caller)
        return detail.transaction, created

    # --- operator actions ----------------------------------------------------------------

    async def retry(
        self,
        gid: str,
        caller: Principal,
        *,
        actor: str,
        reason: str | None = None,
        run_now: bool = True,
    ) -> TransactionDetail:
        """Send a parked transaction back into phase two with a fresh retry budget. With
        ``run_now`` this process runs the first round at once and waits for it (bounded);
        otherwise the next recovery scan of any coordinator does."""
        self._require_admin(caller, "retrying a parked transaction")
        txn, lease = await self.log.retry_parked(
            gid,
            actor=actor,
            owner=self.driver.owner if run_now else None,
            lease_ttl_s=self.settings.lease_ttl_s,
            reason=reason,
        )
        self._audit("retry", gid, actor, status=txn.status.value, reason=reason or "")
        if lease is not None:
            self.driver.spawn_drive(lease)
            await self.driver.settle(gid)
        return await self.log.detail(gid)

    async def resolve(
        self, gid: str, caller: Principal, *, actor: str, note: str
    ) -> TransactionDetail:
        """An operator finished a parked transaction's stuck branches by hand."""
        self._require_admin(caller, "resolving a parked transaction")
        txn = await self.log.resolve_parked(gid, actor=actor, note=note)
        self._audit("resolve", gid, actor, status=txn.status.value, note=note)
        return await self.log.detail(gid)

    async def resolve_branch(
        self, gid: str, branch_id: str, caller: Principal, *, actor: str, note: str
    ) -> TransactionDetail:
        """An operator finished one branch of a parked transaction by hand; the others can
        then be retried. Resolving the last one resolves the transaction."""
        self._require_admin(caller, "resolving a branch by hand")
        txn = await self.log.resolve_parked(gid, actor=actor, note=note, branch_id=branch_id)
        self._audit("resolve_branch", gid, actor, branch_id=branch_id, status=txn.status.value)
        return await self.log.detail(gid)

    # --- the participant registry -----------------------------------------------------

    async def register_participant(
        self, new: NewParticipant, caller: Principal
    ) -> tuple[Participant, bool]:
        """Register a participant (or replace its registration; its breaker is kept). Its
        URLs pass the participant URL policy now, and every call to them again. A service
        key registers its own (owner_service is its name); replacing or taking another
        service's participant needs an admin key."""
        self._require_writer(caller)
        owner = new.owner_service
        as_service = not caller.is_admin and caller.name is not None
        if as_service:
            if owner is not None and owner != caller.name:
                raise Forbidden(
                    f"a service key registers participants for its own service ({caller.name!r})"
                )
            owner = caller.name
        for field, url in new.urls.items():
            try:
                self.policy.check_url(url)
            except PolicyError as exc:
                raise InvalidInput(f"{field}: {exc}") from exc
        if new.call_timeout_s is not None:
            self.limits.check_options(new.call_timeout_s, {})
        if as_service:
            await self.driver.participants.refresh()
            self._refuse_overlap(new, owner)
            new = self._keep_tls_profile(new)
        profiles = self.settings.participant_tls_profiles_dir
        if new.tls_profile is not None and profile_directory(profiles, new.tls_profile) is None:
            raise InvalidInput(
                f"tls_profile {new.tls_profile!r} is not configured on this coordinator (no"
                " directory of that name in TCC_PARTICIPANT_TLS_PROFILES_DIR)"
            )
        # An admin's registration without an owner keeps the one it has; a service key's
        # replaces only its own (the log checks it in the same statement).
        written = await self.log.register_participant(
            dataclasses.replace(new, owner_service=owner, registered_by=caller.name),
            replace_any=not as_service,
        )
        if written is None:
            current = await self.log.participant(new.name)
            whose = current.owner_service if current else None
            raise Forbidden(
                f"participant {new.name!r} is {_whose(whose)}: only an admin key may replace it"
            )
        registered, created = written
        await self.driver.participants.refresh()
        log.info("participant_registered", participant=new.name, created=created, by=caller.name)
        return registered, created

    def _keep_tls_profile(self, new: NewParticipant) -> NewParticipant:
        """A TLS profile is a client identity of the coordinator's: an admin assigns it. A
        service key registering again keeps the one its participant has (giving none, or
        the same); choosing another is refused."""
        current = self.driver.participants.get(new.name)
        kept = current.tls_profile if current is not None else None
        if new.tls_profile is None or new.tls_profile == kept:
            return dataclasses.replace(new, tls_profile=kept)
        raise Forbidden(
            "only an admin key assigns a participant's tls_profile (the client certificate"
            " the coordinator presents to it)"
        )

    def _refuse_overlap(self, new: NewParticipant, owner: str | None) -> None:
        """A service key may not register URLs another service's participant answers at,
        nor a base URL that would take in another's: the breaker and the counts of calls
        to them would become its to steer."""
        registry = self.driver.participants
        for field, url in new.urls.items():
            if field == "health_url":
                continue
            found = registry.owner_of([url])
            other = registry.get(found) if found is not None else None
            if other is not None and other.name != new.name and other.owner_service != owner:
                raise Forbidden(
                    f"{field}: {url} belongs to participant {other.name!r},"
                    f" {_whose(other.owner_service)}"
                )
        if new.base_url is not None:
            for other in registry.all():
                if other.name == new.name or other.owner_service == owner:
                    continue
                if any(url_under(url, new.base_url) for url in other.urls.values()):
                    raise Forbidden(
                        f"base_url: {new.base_url} would take in the URLs of participant"
                        f" {other.name!r}, {_whose(other.owner_service)}"
                    )

    async def remove_participant(self, name: str, caller: Principal) -> Participant:
        """Take a participant out of the registry (its service's key, or an admin's).
        Branches that named it keep their URLs and are still called."""
        registered = await self.participant(name, caller)
        self._require_writer(caller)
        owner = None if caller.is_admin or caller.name is None else caller.name
        if not await self.log.remove_participant(name, owner=owner):
            if await self.log.participant(name) is None:
                raise NotFound(f"no participant {name!r} is registered")
            raise Forbidden(
                f"participant {name!r} is {_whose(registered.owner_service)}: only an admin"
                " key may remove it"
            )
        self.driver.participants.forget(name)
        log.info("participant_removed", participant=name, by=caller.name)
        return registered

    async def participant(self, name: str, caller: Principal) -> Participant:
        """One registered participant (any key may read the registry)."""
        registered = await self.log.participant(name)
        if registered is None:
            raise NotFound(f"no participant {name!r} is registered")
        return registered

    async def participants(
        self, caller: Principal, window_s: float = USAGE_WINDOW_S
    ) -> list[tuple[Participant, ParticipantUsage]]:
        """Every registered participant with its calls over the window (all coordinators)
        and the transactions waiting on it."""
        registry = await self.log.participants()
        names = [p.name for p in registry.participants]
        usage = await self.log.participant_usage(names, window_s)
        return list(zip(registry.participants, usage, strict=True))

    async def reset_breaker(self, name: str, caller: Principal, *, actor: str) -> Participant:
        """An operator closes a participant's breaker: its calls resume at once, ramping
        up (audited)."""
        self._require_admin(caller, "closing a breaker")
        await self.participant(name, caller)
        reset = await self.driver.participants.reset(name)
        if reset is None:
            raise NotFound(f"no participant {name!r} is registered")
        log.warning("operator_action", action="breaker_reset", participant=name, actor=actor)
        self.metrics.admin_action("breaker_reset")
        return reset

    def _audit(self, action: str, gid: str, actor: str, **details: str) -> None:
        log.warning("operator_action", action=action, gid=gid, actor=actor, **details)
        self.metrics.admin_action(action)

    # --- reads -------------------------------------------------------------------------

    async def detail(
        self,
        gid: str,
        caller: Principal,
        events_limit: int = DEFAULT_EVENTS_PAGE,
        *,
        whole: bool = False,
    ) -> TransactionDetail:
        """The transaction with its branches and the first page of its timeline (``whole``:
        all of it, page by page)."""
        await self._owned(gid, caller)
        detail = await self.log.detail(gid, events_limit)
        if not whole:
            return detail
        events, more = list(detail.events), detail.more_events
        while more and events:
            page, more = await self.log.events(gid, events[-1].id, WHOLE_TIMELINE_PAGE)
            events.extend(page)
        return dataclasses.replace(detail, events=events, more_events=False)

    async def events(
        self, gid: str, caller: Principal, after_id: int, limit: int
    ) -> tuple[list[Event], bool]:
        await self._owned(gid, caller)
        return await self.log.events(gid, after_id, limit)

    async def list_transactions(
        self, flt: ListFilter, caller: Principal
    ) -> tuple[list[Transaction], bool]:
        """A page of transactions, newest first, and whether more follow."""
        self._require_reader(caller, "listing transactions")
        rows = await self.log.list(dataclasses.replace(flt, limit=flt.limit + 1))
        return rows[: flt.limit], len(rows) > flt.limit

    async def overview(self, caller: Principal, window_s: float = 900.0) -> Overview:
        """What is open, what needs attention, and the last minutes' outcomes."""
        self._require_reader(caller, "the overview")
        return await self.log.overview(window_s, ATTENTION_LIMIT)

    async def metrics_exposition(self) -> bytes:
        """This server's counters and the log's gauges (left out, with tcc_log_up 0, when
        the log cannot be read: the counters are still worth a scrape)."""
        try:
            backlog: Backlog | None = await self.log.backlog()
            registry = await self.log.participants()
            breakers = {p.name: p.breaker_state.value for p in registry.participants}
        except DatabaseUnavailable:
            backlog, breakers = None, {}
        return self.metrics.exposition(backlog, breakers)

    async def ready(self) -> list[str]:
        """What keeps this coordinator from serving; empty when it is ready."""
        return await self.log.readiness()


def _whose(owner: str | None) -> str:
    return f"owned by service {owner!r}" if owner else "registered by an admin for no service"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
