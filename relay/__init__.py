"""relay: Twilio Media Streams bridged byte for byte to a speech-to-speech agent.

The map, in the order a call meets it::

    app.py                 composition root: settings, tools, routes; ``python app.py`` serves
    relay/
      config.py            every setting, read once from the environment
      serving.py           how the app is served: uvicorn's WebSocket protocol, tuned for streams
      workers.py           ``WORKERS``: several draining processes on one socket
      worker_metrics.py    metrics summed over the workers (prometheus-client's multiprocess mode)
      routes.py            HTTP and WebSocket routes, the lifespan, one error boundary per call
      admission.py         which calls /twiml takes (rate limit, draining, lag, caps) and which
                           stream each single-use token opens
      load.py              the event loop's lag, measured all the time by a timer's overshoot
      draining.py          SIGTERM: refuse new calls, let live ones finish, then exit 0
      security.py          Twilio signatures and per-call stream tokens
      netaddr.py           is this address (host, URL, client) on this machine? one answer
      twiml.py             TwiML documents (twilio's builder)
      outcome_records.py   why a stream was closed, by CallSid, for the <Connect action> answer
      recovery.py          getting an agent and getting it back: retry, resume, fresh, fallback
      bridge.py            CallBridge: the one owner of a call's sockets, tasks and timeouts
      call_tools.py        a call's tools: runs tool calls, carries out hang-ups and transfers
      agent_links.py       LinkAttempts: a call's agent link, opened, awaited and replaced
      protocol.py          CallProtocol: the pure state of a call, messages in, actions out
      actions.py           what the protocol asks its owner to do (plain dataclasses)
      goodbye.py           the wait for the agent's goodbye before a hang-up or transfer (pure)
      twilio_messages.py   the Media Streams wire format
      agent_messages.py    the Voice Agent API wire format
      agent_link.py        the agent socket, on websockets' sans-I/O protocol
      sansio_ws.py         one driver for websockets' sans-I/O protocol
      tools.py             the tool API: ``tool``, ``ToolContext``, ``Registry``, ``load_tools``
      call_control.py      the built-in tools: ``end_call``, ``transfer_call``
      twilio_rest.py       Twilio's REST API (transfers, outbound calls)
      store.py             cross-call state behind one interface (``Store``), in memory
      redis_store.py       the same ``Store`` in Redis, shared by several instances
      fail_open.py         ``FailOpenStore``: limits and single-use checks pass while Redis fails
      shared_state.py      what calls and instances share (``REDIS_URL``), and its lifespan
      bus.py               messages between instances (Redis pub/sub), or within this process
      call_directory.py    every instance's live calls: each stream's entry, leases, hang-ups
      takeover.py          a call whose stream was lost, streamed again to resume its session
      background.py        a task that runs for as long as a block does
      errors.py            the exception tree
      outcomes.py          how a call ended: one set of values for metrics, records, logs, report
      monitor.py           what the process knows of its calls: live list, metrics, records, hook
      call_record.py       one call's record, built from the protocol's events (pure)
      record_log.py        the records' daily JSON-lines files
      metrics.py           the Prometheus metrics (frame counters read at scrape time)
      calls_page.py        ``/metrics``, the calls page and its JSON API (static/: the page)
      admin_access.py      who may read them (loopback or ADMIN_TOKEN) and who may hang up
      redaction.py         what is removed from transcripts (cards, digit runs, e-mails)
      masking.py           phone numbers as logs and records show them: ``+1555***4567``
      log_format.py        ``LOG_FORMAT=text|json`` for every logger, uvicorn's too
      report.py            ``python -m relay.report``: a summary of the call records
      outbound.py          ``python -m relay.outbound +15551234567``
      simulate.py          ``python -m relay.simulate``: a call from the terminal
      local/               trying it without a phone (depends on the core, never the reverse):
                           the local agent, its session and keypad, μ-law audio helpers, the
                           simulated caller and the browser softphone with its static files
      bench/               ``python -m relay.bench``: the relay against a bare relay (extra: bench)
    tools/                 the user's tools: plain modules loaded by path (``TOOLS_DIR``)
"""
