namespace Haven.Testing;

/// <summary>
/// A clock that moves only when told, for tests of code that waits (retries, timeouts, schedules).
/// (Microsoft.Extensions.TimeProvider.Testing's FakeTimeProvider is not served by the package mirror.)
/// <para>
/// <see cref="Advance"/> moves the clock and fires every timer that has come due, in due order, on the calling
/// thread. With <see cref="AutoAdvance"/> on, a timer started with a finite due time is fired at once (on the thread
/// pool) and the clock moves to its due time: code under test runs through its waits without a test thread
/// advancing the clock, and <see cref="Delays"/> records what it asked to wait.
/// </para>
/// Thread-safe.
/// </summary>
public sealed class ManualTimeProvider : TimeProvider
{
    private readonly object _lock = new();
    private readonly List<ManualTimer> _timers = new();
    private readonly List<TimeSpan> _delays = new();
    private DateTimeOffset _now;

    public ManualTimeProvider(DateTimeOffset? start = null, bool autoAdvance = false)
    {
        _now = start ?? new DateTimeOffset(2030, 1, 1, 0, 0, 0, TimeSpan.Zero);
        AutoAdvance = autoAdvance;
    }

    /// <summary>When true, timers fire as soon as they are started, moving the clock to their due time.</summary>
    public bool AutoAdvance { get; set; }

    /// <summary>The due times of all timers started so far (one-shot waits such as <c>Task.Delay</c> included), in order.</summary>
    public IReadOnlyList<TimeSpan> Delays
    {
        get
        {
            lock (_lock)
            {
                return _delays.ToList();
            }
        }
    }

    public override TimeZoneInfo LocalTimeZone => TimeZoneInfo.Utc;

    public override long TimestampFrequency => TimeSpan.TicksPerSecond;

    public override DateTimeOffset GetUtcNow()
    {
        lock (_lock)
        {
            return _now;
        }
    }

    public override long GetTimestamp() => GetUtcNow().UtcTicks;

    /// <summary>Moves the clock forward and fires the timers that come due, each at its own due time.</summary>
    public void Advance(TimeSpan by)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(by, TimeSpan.Zero);
        DateTimeOffset target;
        lock (_lock)
        {
            target = _now + by;
        }

        AdvanceTo(target);
    }

    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
    {
        ArgumentNullException.ThrowIfNull(callback);
        var timer = new ManualTimer(this, callback, state);
        timer.Change(dueTime, period);
        return timer;
    }

    private void AdvanceTo(DateTimeOffset target)
    {
        while (true)
        {
            ManualTimer? next;
            lock (_lock)
            {
                next = _timers.Where(t => t.DueAt <= target).MinBy(t => t.DueAt);
                if (next is null)
                {
                    if (target > _now)
                    {
                        _now = target;
                    }

                    return;
                }

                if (next.DueAt > _now)
                {
                    _now = next.DueAt;
                }

                if (next.Period is { } period)
                {
                    next.DueAt = _now + period;
                }
                else
                {
                    _timers.Remove(next);
                }
            }

            next.Fire();
        }
    }

    private void Schedule(ManualTimer timer, TimeSpan dueTime, TimeSpan period)
    {
        bool fireNow;
        DateTimeOffset dueAt;
        lock (_lock)
        {
            _timers.Remove(timer);
            if (dueTime == Timeout.InfiniteTimeSpan)
            {
                return;
            }

            ArgumentOutOfRangeException.ThrowIfLessThan(dueTime, TimeSpan.Zero);
            dueAt = _now + dueTime;
            timer.DueAt = dueAt;
            timer.Period = period == Timeout.InfiniteTimeSpan || period == TimeSpan.Zero ? null : period;
            _timers.Add(timer);
            _delays.Add(dueTime);
            fireNow = AutoAdvance;
        }

        if (fireNow)
        {
            // Not inline: the caller (e.g. Task.Delay) may not have finished setting up when the callback runs.
            ThreadPool.QueueUserWorkItem(_ => AdvanceTo(dueAt));
        }
    }

    private void Cancel(ManualTimer timer)
    {
        lock (_lock)
        {
            _timers.Remove(timer);
        }
    }

    private sealed class ManualTimer(ManualTimeProvider owner, TimerCallback callback, object? state) : ITimer
    {
        public DateTimeOffset DueAt { get; set; }

        public TimeSpan? Period { get; set; }

        public bool Change(TimeSpan dueTime, TimeSpan period)
        {
            owner.Schedule(this, dueTime, period);
            return true;
        }

        public void Fire() => callback(state);

        public void Dispose() => owner.Cancel(this);

        public ValueTask DisposeAsync()
        {
            Dispose();
            return ValueTask.CompletedTask;
        }
    }
}
