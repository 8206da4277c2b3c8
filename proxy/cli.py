"""The `bounceproxy` command line (click throughout).

Every failure is one line on stderr and a non-zero exit: 2 for usage and configuration
mistakes, 1 for everything else. No tracebacks reach the user.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from proxy.cli_options import config_option
from proxy.errors import ConfigError
from proxy.model import Correlation
from proxy.queries import EVENT_COLUMNS, EXPLAIN_COLUMNS, INBOUND_COLUMNS, MESSAGE_COLUMNS, SUPPRESSION_COLUMNS

if TYPE_CHECKING:
    from proxy.config import Config

DEFAULT_CONFIG = "config.toml"
CORRELATIONS = [c.value for c in Correlation]


class Failure(click.ClickException):
    exit_code = 1


def _load(config_path: str | None) -> Config:
    """The named config file, else ./config.toml when present, else defaults + environment."""
    from proxy.config import load_config

    if config_path is None and Path(DEFAULT_CONFIG).is_file():
        config_path = DEFAULT_CONFIG
    return load_config(config_path)


def _since(text: str | None) -> float | None:
    from proxy.store import parse_since

    if text is None:
        return None
    try:
        return parse_since(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


class StoreFailure(Failure):
    """The store could not be opened or answer: `bounceproxy: <store>: <reason>`, exit 1."""


def _run(coro):
    import asyncio

    from proxy.queries import QueryError
    from proxy.store import StoreError

    try:
        return asyncio.run(coro)
    except StoreError as exc:
        raise StoreFailure(str(exc)) from None
    except QueryError as exc:
        raise Failure(str(exc)) from None


def _is_sqlite(config: Config) -> bool:
    return config.store.backend != "postgresql"


def _log_exists(config: Config) -> bool:
    """A SQLite file is there to read (PostgreSQL: always try, a connection failure says why)."""
    return not _is_sqlite(config) or Path(config.store.path).exists()


async def _with_store(config: Config, fn):
    """A read-only store for `fn` (SQLite: the file must exist; nothing is created by a query)."""
    from proxy.store import open_store

    if not _log_exists(config):
        raise Failure(f"no bounce log at {config.store.path} ([store] path in {config.source}); run `bounceproxy serve` first")
    store = await open_store(config.store, readonly=True)
    try:
        return await fn(store)
    finally:
        await store.close()


def _flat(row: dict) -> dict:
    """Lists (a message's recipients, an inbound mail's envelope recipients) as one comma-separated cell."""
    return {k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in row.items()}


def _emit(rows: list[dict], columns: list[str], fmt: str, titles: dict[str, str] | None = None) -> None:
    """Rows as a human table, JSON lines or CSV."""
    out = sys.stdout  # click.get_text_stream is deprecated (Click 9 removes it); CliRunner swaps sys.stdout too
    rows = [_flat(row) for row in rows]
    if fmt == "json":
        for row in rows:
            out.write(json.dumps({c: row.get(c) for c in columns}, ensure_ascii=False) + "\n")
        return
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
        return
    if not rows:
        out.write("(none)\n")
        return
    titles = titles or {}
    cells = [[("" if r.get(c) is None else str(r.get(c))).replace("\n", " ") for c in columns] for r in rows]
    widths = [min(60, max(len(titles.get(c, c)), *(len(row[i]) for row in cells))) for i, c in enumerate(columns)]
    out.write("  ".join(titles.get(c, c).upper().ljust(w) for c, w in zip(columns, widths)).rstrip() + "\n")
    for row in cells:
        out.write("  ".join(v[:w].ljust(w) for v, w in zip(row, widths)).rstrip() + "\n")


def output_options(fn):
    fn = click.option("--csv", "fmt", flag_value="csv", help="CSV with a header row.")(fn)
    fn = click.option("--json", "fmt", flag_value="json", help="One JSON object per line.")(fn)
    fn = click.option("--table", "fmt", flag_value="table", default=True, hidden=True)(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bounceproxy")
def cli() -> None:
    """bounceproxy: an SMTP relay and bounce MX that logs which messages bounced and why."""


@cli.command()
@config_option
@click.option("-v", "--verbose", is_flag=True, help="Log every session, not just warnings and start-up.")
def serve(config_path: str | None, verbose: bool) -> None:
    """Run the relay, the bounce MX and the API until interrupted."""
    from proxy.app import run

    config = _load(config_path)
    run(config, verbose=verbose)


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per bounced or complained recipient.")
def parse(files: tuple[str, ...], as_json: bool) -> None:
    """Parse bounce mails offline (no store, no config needed).

    Many files are parsed on every core: forked workers each take a slice of the list, and the
    output keeps the order of the files given."""
    import io
    import os

    workers = max(1, min(os.cpu_count() or 1, len(files) // PARSE_FILES_PER_WORKER))
    readers: list[int] = []
    for index in range(1, workers):
        read_end, write_end = os.pipe()
        if os.fork() == 0:  # a worker: parse its slice into the pipe, then leave
            os.close(read_end)
            with os.fdopen(write_end, "w", encoding="utf-8") as pipe:
                failed = _parse_files(files[index::workers], index, as_json, pipe)
            os._exit(1 if failed else 0)
        os.close(write_end)
        readers.append(read_end)
    own = io.StringIO()
    failed = _parse_files(files[0::workers], 0, as_json, own)
    outputs = [own.getvalue()]
    for read_end in readers:
        with os.fdopen(read_end, "r", encoding="utf-8") as pipe:
            outputs.append(pipe.read())
        _, status = os.wait()
        failed += os.waitstatus_to_exitcode(status) != 0
    lines: dict[str, list[str]] = {}
    for output in outputs:
        for tagged in output.splitlines(keepends=True):
            tag, _, line = tagged.partition("\t")
            lines.setdefault(tag, []).append(line)
    out = sys.stdout
    for position in range(len(files)):  # file p is item p // workers of slice p % workers
        out.writelines(lines.get(f"{position % workers}:{position // workers}", ()))
    if failed:
        sys.exit(1)


PARSE_FILES_PER_WORKER = 64  # below this many files a second process costs more than it saves


def _parse_files(files: tuple[str, ...], slice_index: int, as_json: bool, out) -> int:
    """Parse one slice, writing `slice:position TAB line` per output line; returns the failures."""
    from proxy.dsn import ParseError, parse as parse_mail, report_rows

    failed = 0
    for position, name in enumerate(files):
        try:
            report = parse_mail(Path(name).read_bytes())
        except OSError as exc:
            click.echo(f"bounceproxy: {name}: {exc.strerror or exc}", err=True)
            failed += 1
            continue
        except ParseError as exc:
            click.echo(f"bounceproxy: {name}: {exc}", err=True)
            failed += 1
            continue
        if report.truncated:  # a parse limit reached is said, never silent
            click.echo(f"bounceproxy: {name}: parse limits reached: {'; '.join(report.truncated)}", err=True)
        for row in report_rows(name, report):
            if as_json:
                line = json.dumps(row, ensure_ascii=False)
            else:
                line = (f"{name}: {row['kind']} {row['recipient'] or '-'} {row.get('status') or '-'} "
                        f"{row.get('bounce_type') or '-'} {row.get('reason') or '-'} [{row.get('format')}]")
            out.write(f"{slice_index}:{position}\t{line}\n")
    return failed


@cli.command()
@config_option
@click.option("--since", help="Only newer than this: 30m, 1h, 7d or an ISO date.")
@click.option("--recipient", help="Only this address.")
@click.option("--type", "bounce_type", type=click.Choice(["hard", "soft", "undetermined"]))
@click.option("--reason", help="Only this reason (e.g. userunknown).")
@click.option("--source", type=click.Choice(["sync", "async"]))
@click.option("--kind", type=click.Choice(["bounce", "delay", "complaint", "autoreply", "delivered", "unknown"]))
@click.option("--correlation", type=click.Choice(CORRELATIONS),
              help="foreign_recipient: addresses a report named that its message was never sent to.")
@click.option("--message", "relay_id", metavar="ID", help="Only events of this message (its relay id).")
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=100, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv", "ses"]),
              help="ses: each bounce or complaint as the JSON notification SES would publish.")
@click.option("--explain", is_flag=True,
              help="Also what each verdict was made from: SMTP stage, Action, status source, the rule that decided.")
@output_options
def bounces(config_path, since, recipient, bounce_type, reason, source, kind, correlation, relay_id, limit, fmt,
            explain) -> None:
    """Bounces, delays, complaints and auto-replies, newest first."""
    from proxy import queries
    from proxy.store import EventFilter

    config = _load(config_path)
    flt = EventFilter(since=_since(since), recipient=recipient, bounce_type=bounce_type, reason=reason, source=source,
                      kind=kind, correlation=correlation, relay_id=relay_id, limit=limit)
    if fmt == "ses":
        for notification in _run(_with_store(config, lambda s: queries.ses_notifications(s, flt))):
            click.echo(json.dumps(notification, ensure_ascii=False))
        return
    rows = _run(_with_store(config, lambda s: queries.list_events(s, flt)))
    if not explain:
        _emit(rows, EVENT_COLUMNS, fmt)
    elif fmt in ("json", "csv"):
        _emit(rows, EVENT_COLUMNS + EXPLAIN_COLUMNS, fmt)
    else:
        _emit_explained(rows)


def _emit_explained(rows: list[dict]) -> None:
    """Each event on its line, then the why under it."""
    from proxy.queries import why

    out = sys.stdout
    if not rows:
        out.write("(none)\n")
    for e in rows:
        out.write(f"{e['at']}  {e['source']}  {e['kind']}  {e['recipient'] or '-'}  {e['bounce_type']}  {e['reason']}  "
                  f"{e['status'] or '-'}  via {e['correlation']}  (event {e['id']})\n")
        out.write(f"    {why(e)}\n")
        if e.get("diagnostic"):
            out.write(f"    text: {e['diagnostic'][:300]}\n")


@cli.group(invoke_without_command=True)
@config_option
@click.option("--since", help="Only newer than this: 30m, 1h, 7d or an ISO date.")
@click.option("--recipient", help="Only messages to this address.")
@click.option("--status", type=click.Choice(["pending", "sent", "partial", "rejected", "failed", "possibly_sent"]))
@click.option("--sender", help="Only this envelope sender.")
@click.option("--duplicates", is_flag=True,
              help="Only messages that went out more than once (same Message-ID, a recipient in common).")
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=100, show_default=True)
@output_options
@click.pass_context
def messages(ctx, config_path, since, recipient, status, sender, duplicates, limit, fmt) -> None:
    """Relayed messages, newest first (`messages show ID` for one message's whole story)."""
    if ctx.invoked_subcommand is not None:
        return
    from proxy import queries
    from proxy.store import MessageFilter

    config = _load(config_path)
    flt = MessageFilter(since=_since(since), recipient=recipient, status=status, sender=sender, limit=limit,
                        duplicates=duplicates)
    _emit(_run(_with_store(config, lambda s: queries.list_messages(s, flt))), MESSAGE_COLUMNS, fmt)


@messages.command("show")
@config_option
@click.argument("relay_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="The story as one JSON object.")
@click.option("--raw", is_flag=True, help="Print the message as the simulator kept it.")
def messages_show(config_path, relay_id, as_json, raw) -> None:
    """One message: its recipients, the upstream's replies, and every later bounce."""
    from proxy import queries

    config = _load(config_path)
    if raw:
        sys.stdout.buffer.write(_run(_with_store(config, lambda s: queries.message_raw(s, relay_id))))
        return
    story = _run(_with_store(config, lambda s: queries.message_story(s, relay_id)))
    if as_json:
        click.echo(json.dumps(story, ensure_ascii=False))
        return
    for line in queries.story_lines(story):
        click.echo(line)


@cli.command()
@config_option
@click.option("--since", default="24h", show_default=True, help="Window: 30m, 1h, 7d or an ISO date.")
@click.option("--json", "as_json", is_flag=True)
def stats(config_path, since, as_json) -> None:
    """Counts of messages and bounces, and the bounce rate, over a window."""
    from proxy import queries

    config = _load(config_path)
    start = _since(since)
    summary = _run(_with_store(config, lambda s: queries.stats_summary(s, start)))
    if as_json:
        click.echo(json.dumps(summary))
        return
    for line in queries.stats_lines(summary):
        click.echo(line)
    _emit(summary["by_reason"], ["source", "kind", "bounce_type", "reason", "n"], "table")
    click.echo("by sending identity:")
    _emit(summary["identities"], ["identity", "recipients", "hard_bounces", "complaints", "hard_bounce_rate",
                                  "complaint_rate", "paused"], "table")


@cli.command()
@config_option
@click.option("--state", type=click.Choice(["pending", "parsed", "failed"]))
@click.option("--since", help="Only newer than this: 30m, 1h, 7d or an ISO date.")
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=100, show_default=True)
@click.option("--raw", "raw_id", type=int, help="Print the raw bytes of this inbound mail.")
@click.option("--flagged", is_flag=True,
              help="Only mails that named addresses their message never went to, or that a parse limit cut.")
@output_options
def inbound(config_path, state, since, limit, raw_id, flagged, fmt) -> None:
    """Mails received by the bounce MX, with their parse state."""
    from proxy import queries
    from proxy.store import InboundFilter

    config = _load(config_path)
    if raw_id is not None:
        sys.stdout.buffer.write(_run(_with_store(config, lambda s: queries.inbound_raw(s, raw_id))))
        return
    flt = InboundFilter(state=state, since=_since(since), limit=limit, flagged=flagged)
    _emit(_run(_with_store(config, lambda s: queries.list_inbound(s, flt))), INBOUND_COLUMNS, fmt)


@cli.command()
@config_option
@click.option("--all", "everything", is_flag=True, help="Reparse every stored mail (after a parser upgrade).")
@click.option("--classify-only", is_flag=True, help="Only re-derive reason and hard/soft of stored events.")
def reparse(config_path, everything, classify_only) -> None:
    """Parse and correlate stored inbound mails again: pending and failed ones, or --all.

    Safe to repeat and safe beside a running server: events are recorded once per mail and
    recipient, and a reparse rewrites their verdicts in place.
    """
    from proxy.inbound.pipeline import PARSER_VERSION, Pipeline
    from proxy.relay.verp import VerpSigner
    from proxy.store import open_store

    config = _load(config_path)
    if not _log_exists(config):
        raise Failure(f"no bounce log at {config.store.path} ([store] path in {config.source})")
    inbound_cfg = config.inbound
    key = config.secret(inbound_cfg.hmac_key_env)
    signer = VerpSigner(key.encode(), inbound_cfg.verp_local, inbound_cfg.bounce_domains[0]) if key else None

    async def go():
        store = await open_store(config.store)
        store.webhook_targets = config.webhooks.targets()
        try:
            pipeline = Pipeline(store, signer, inbound_cfg.bounce_domains, config.store.correlation_window_days,
                                limits=inbound_cfg.parse_limits())
            if classify_only:
                return await pipeline.reclassify()
            return await pipeline.reparse(None if everything else ["pending", "failed"])
        finally:
            await store.close()

    count = _run(go())
    what = "event(s)" if classify_only else "inbound mail(s)"
    click.echo(f"re{'classified' if classify_only else 'parsed'} {count} {what} with parser version {PARSER_VERSION}")


@cli.command("classify")
@click.argument("reply")
@click.option("--status", help="The DSN's Status field, when classifying a DSN rather than a reply line.")
@click.option("--kind", type=click.Choice(["bounce", "delay"]), default="bounce", show_default=True)
@click.option("--command", "smtp_command", type=click.Choice(["CONN", "HELO", "EHLO", "MAIL", "RCPT", "DATA", "BDAT"],
              case_sensitive=False), help="The SMTP command the reply answered (a refusal after DATA is no missing mailbox).")
@click.option("--action", type=click.Choice(["failed", "delayed"]), help="The DSN's Action, when classifying a DSN.")
@click.option("--explain", is_flag=True, help="Print every step of the decision and the phrase or code that decided.")
@click.option("--json", "as_json", is_flag=True)
def classify_command(reply, status, kind, smtp_command, action, explain, as_json) -> None:
    """Classify one SMTP reply or diagnostic line and show the evidence that decided it.

    Example: bounceproxy classify --explain --command DATA "550 5.1.1 <a@b>: Recipient address rejected: User unknown"
    """
    from proxy.dsn import classify as C
    from proxy.model import Kind

    if status or action:
        verdict = C.classify(status, None, reply, Kind(kind), action, command=smtp_command)
    else:
        verdict = C.classify_reply(reply, Kind(kind), command=smtp_command)
    if as_json:
        click.echo(json.dumps({"reason": verdict.reason, "bounce_type": str(verdict.bounce_type),
                               "status": verdict.status, "status_source": verdict.status_source and str(verdict.status_source),
                               "evidence": verdict.evidence, "stage": verdict.stage, "decided_by": verdict.decided_by,
                               "steps": list(verdict.steps)}))
        return
    click.echo(C.explain_steps(verdict) if explain else C.explain(verdict))


async def _with_writer(config: Config, fn):
    """A read-write store (safe beside a running server: SQLite WAL, one transaction per change)."""
    from proxy.store import open_store

    store = await open_store(config.store)
    store.webhook_targets = config.webhooks.targets()  # what an operator changes is news for the webhooks too
    try:
        return await fn(store)
    finally:
        await store.close()


def _scope(config: Config, sender_domain: str | None) -> str:
    if sender_domain and config.suppression.scope != "sender_domain":
        raise click.BadParameter("--sender-domain needs [suppression] scope = \"sender_domain\"")
    return (sender_domain or "").lower()


@cli.group(invoke_without_command=True)
@click.pass_context
def suppressions(ctx) -> None:
    """The suppression list: list (default), add, remove, import, export."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(suppressions_list)


@suppressions.command("list")
@config_option
@click.option("--address", help="Only this address.")
@click.option("--sender-domain", help="Only this sender domain's list ([suppression] scope = sender_domain).")
@click.option("--limit", type=click.IntRange(1, 10_000_000), default=100, show_default=True)
@output_options
def suppressions_list(config_path=None, address=None, sender_domain=None, limit=100, fmt="table") -> None:
    """Suppressed addresses, newest first."""
    from proxy import queries
    from proxy.store import SuppressionFilter
    from proxy.suppression import normalize_address

    config = _load(config_path)
    flt = SuppressionFilter(address=normalize_address(address) if address else None,
                            scope=_scope(config, sender_domain) if sender_domain else None, limit=limit)
    _emit(_run(_with_store(config, lambda s: queries.list_suppressions(s, flt))), SUPPRESSION_COLUMNS, fmt)


@suppressions.command("add")
@config_option
@click.argument("addresses", nargs=-1, required=True)
@click.option("--reason", default="manual", show_default=True, help="Why (a word, e.g. userunknown).")
@click.option("--days", type=click.FloatRange(min=0), default=0, help="Expire after this many days (0: never).")
@click.option("--sender-domain", help="Add to this sender domain's list.")
def suppressions_add(config_path, addresses, reason, days, sender_domain) -> None:
    """Suppress addresses by hand."""
    from proxy import queries
    from proxy.suppression import normalize_address

    config = _load(config_path)
    scope = _scope(config, sender_domain)
    for address in addresses:
        if "@" not in normalize_address(address):
            raise click.BadParameter(f"{address!r} is not an email address")
    count = _run(_with_writer(config, lambda s: queries.add_suppressions(s, scope, addresses, reason, days)))
    click.echo(f"suppressed {count} address(es)")


@suppressions.command("remove")
@config_option
@click.argument("addresses", nargs=-1, required=True)
@click.option("--sender-domain", help="Remove from this sender domain's list.")
def suppressions_remove(config_path, addresses, sender_domain) -> None:
    """Take addresses off the list (the next message to them is sent)."""
    from proxy import queries

    config = _load(config_path)
    scope = _scope(config, sender_domain)
    missing = _run(_with_writer(config, lambda s: queries.remove_suppressions(s, scope, addresses)))
    click.echo(f"removed {len(addresses) - len(missing)} address(es)")
    if missing:
        raise Failure(f"not on the list: {', '.join(missing)}")


@suppressions.command("export")
@config_option
@click.option("--sender-domain", help="Export this sender domain's list.")
def suppressions_export(config_path, sender_domain) -> None:
    """CSV as SES's suppression list: EmailAddress,Reason,LastUpdateTime."""
    from proxy import queries

    config = _load(config_path)
    scope = _scope(config, sender_domain)
    out = sys.stdout
    _run(_with_store(config, lambda s: queries.export_suppressions_csv(s, scope, out)))


@suppressions.command("import")
@config_option
@click.argument("file", type=click.File("r", encoding="utf-8-sig"))
@click.option("--sender-domain", help="Import into this sender domain's list.")
def suppressions_import(config_path, file, sender_domain) -> None:
    """Import a CSV with columns EmailAddress,Reason[,LastUpdateTime] (SES's export; BOUNCE or COMPLAINT)."""
    from proxy import queries

    config = _load(config_path)
    scope = _scope(config, sender_domain)
    try:
        rows = queries.parse_suppressions_csv(file, file.name, scope)
    except queries.QueryError as exc:
        raise Failure(str(exc)) from None
    count = _run(_with_writer(config, lambda s: queries.import_suppressions(s, rows)))
    click.echo(f"imported {count} address(es)")


@cli.command()
@config_option
@click.argument("address")
@click.option("--sender", default="", help="Envelope sender, for per-sender-domain lists.")
@click.option("--json", "as_json", is_flag=True)
def check(config_path, address, sender, as_json) -> None:
    """Is this address suppressed, and why? And what does DNS say of its domain?"""
    import asyncio
    import dataclasses

    from proxy import queries
    from proxy.relay.preflight import Preflight
    from proxy.suppression import sender_scope

    config = _load(config_path)
    scope = sender_scope(sender, config.suppression.scope)
    if _log_exists(config):
        result = _run(_with_store(config, lambda s: queries.check_address(s, address, scope)))
    else:  # no log yet: nothing is suppressed
        result = asyncio.run(queries.check_address(None, address, scope))
    lookups = dataclasses.replace(config.preflight, enabled=True)  # asked for: look even when the relay doesn't
    verdict = asyncio.run(Preflight(lookups).check(result["address"].rpartition("@")[2]))
    result.update(dns=verdict.verdict, dns_detail=verdict.detail)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(queries.check_line(result))
    click.echo(f"dns: {verdict.verdict}: {verdict.detail}")


@cli.command()
@config_option
@click.argument("identity")
def resume(config_path, identity) -> None:
    """Resume sending for an identity the reputation guard paused."""
    from proxy import queries

    config = _load(config_path)
    click.echo(f"resumed {_run(_with_writer(config, lambda s: queries.resume_identity(s, identity)))}")


@cli.command()
@config_option
def migrate(config_path) -> None:
    """Apply the schema migrations to the configured store (either backend) and print its version.

    Safe to repeat: a store already up to date is left as it is."""
    config = _load(config_path)

    async def version(store):
        return await store.schema_version()

    applied, known = _run(_with_writer(config, version))
    where = config.store.path if _is_sqlite(config) else config.store.url
    click.echo(f"{where}: schema version {applied} of {known}" + (" (up to date)" if applied == known else ""))


@cli.command()
@click.option("--from", "source", metavar="URL", required=True,
              help="The store to copy: sqlite:///path/to/bounceproxy.db or postgresql://user@host:port/db.")
@click.option("--to", "destination", metavar="URL", required=True, help="The store to copy into (created or migrated).")
@click.option("--batch", type=click.IntRange(1, 1_000_000), default=1000, show_default=True, help="Rows per page.")
@click.option("--password-env", default="BOUNCEPROXY_STORE_PASSWORD", show_default=True, metavar="NAME",
              help="Environment variable holding the destination's password (PostgreSQL).")
@click.option("--source-password-env", metavar="NAME",
              help="Environment variable holding the source's password (PostgreSQL; default: --password-env).")
def copy(source, destination, batch, password_env, source_password_env) -> None:
    """Copy a whole bounce log from one store to another (e.g. SQLite to PostgreSQL), table by table.

    Rows already in the destination are left alone, so running it again adds nothing. Prints one line
    per table; exits 1 when the destination has fewer rows than the source."""
    import os

    from proxy.store.copy import copy_store

    env = os.environ
    result = _run(copy_store(source, destination, batch=batch,
                             source_password=env.get(source_password_env or password_env) or None,
                             password=env.get(password_env) or None))
    for table in result:
        click.echo(table.line())
    short = [t.table for t in result if t.destination < t.source]
    if short:
        raise Failure(f"the destination has fewer rows than the source in: {', '.join(short)}")


@cli.command()
@config_option
@click.option("--sender-domain", "sender_domains", multiple=True,
              help="Also check SPF and DMARC of this domain (repeatable); domains seen in the log are checked anyway.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per check: status, name, detail.")
def doctor(config_path, sender_domains, as_json) -> None:
    """Check the deployment: bounce MX in DNS, upstream credentials, SPF/DMARC, keys, no open relay."""
    from proxy import doctor as checks

    config = _load(config_path)
    results = checks.run(config, sender_domains)
    if as_json:
        for result in results:
            click.echo(json.dumps(result.json()))
        sys.exit(1 if any(r.status == checks.FAIL for r in results) else 0)
    for result in results:
        click.echo(result.line())
    failed = sum(r.status == checks.FAIL for r in results)
    click.echo(f"{len(results)} checks: {failed} failed, {sum(r.status == checks.WARN for r in results)} warnings")
    if failed:
        sys.exit(1)


@cli.command()
@config_option
@click.option("--from", "sender", metavar="ADDRESS",
              help="Envelope sender (a verified SES identity with a real upstream; default selftest@example.com).")
@click.option("--timeout", type=click.FloatRange(min=1), default=30.0, show_default=True,
              help="Seconds to wait for the bounce MX to receive what comes back.")
def selftest(config_path, sender, timeout) -> None:
    """Send to each SES simulator address through the running service and check the log, step by step.

    The one command to run after set-up: exits 1 when a step is not what SES would do.
    """
    from proxy import selftest as st

    config = _load(config_path)
    if config.upstream.profile != "simulator" and not sender:
        raise click.UsageError("--from is required with a real upstream: a sender address it accepts "
                               "(for SES, one on a verified identity)")
    if sender and "@" not in sender:
        raise click.BadParameter(f"{sender!r} is not an email address", param_hint="--from")
    if not _run(st.run(config, sender, timeout, click.echo)):
        sys.exit(1)


from proxy.webhooks.commands import webhooks  # noqa: E402  (imports proxy.cli inside its commands only)

cli.add_command(webhooks)

from proxy.spool.commands import queue  # noqa: E402  (the same: proxy.cli inside its commands only)

cli.add_command(queue)


def main() -> None:
    """Entry point: click's own errors become one line and exit 2."""
    try:
        cli.main(standalone_mode=False, prog_name="bounceproxy")
    except click.exceptions.Abort:
        click.echo("bounceproxy: aborted", err=True)
        sys.exit(130)
    except getattr(click.exceptions, "NoArgsIsHelpError", ()) as exc:  # a bare `bounceproxy`: the help, not an error
        click.echo(exc.ctx.get_help())
        sys.exit(0)
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        click.echo(f"bounceproxy: error: {exc.format_message()}{hint}", err=True)
        sys.exit(2)
    except ConfigError as exc:
        click.echo(f"bounceproxy: config error: {exc}", err=True)
        sys.exit(2)
    except StoreFailure as exc:  # the store names itself: `bounceproxy: <store>: <reason>`
        click.echo(f"bounceproxy: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"bounceproxy: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
