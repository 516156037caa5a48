using Haven.Testing;
using Xunit;

namespace Haven.Storage.Tests;

public sealed class RetryingStoreTests : StoreConformanceTests
{
    // No jitter: each wait is exactly the backoff ceiling, so the expected delays can be written down.
    private static readonly Func<double> NoJitter = () => 1.0;

    private readonly MemoryStore _memory = new();
    private readonly FaultyStore _faulty;
    private readonly ManualTimeProvider _time = new(autoAdvance: true);
    private readonly List<string> _retries = new();

    public RetryingStoreTests()
    {
        _faulty = new FaultyStore(_memory);
    }

    protected override Task<IStore?> CreateStoreAsync() => Task.FromResult<IStore?>(Retrying());

    private RetryingStore Retrying(RetryOptions? options = null) =>
        new(_faulty, options, _time, NoJitter, message =>
        {
            lock (_retries)
            {
                _retries.Add(message);
            }
        });

    [Fact]
    public async Task TransientFailures_AreRetried_ThenTheCallSucceeds()
    {
        var handle = NewHandle(FileKind.Pack);
        byte[] data = RandomBytes(100);
        await _memory.PutAsync(handle, data, None);
        _faulty.FailNext(StoreOperation.Get, 3, StoreErrorKind.Transient);

        byte[] read = await Retrying().GetAsync(handle, None);

        Assert.Equal(data, read);
        Assert.Equal(4, _faulty.CallCount(StoreOperation.Get));
        Assert.Equal([Ms(200), Ms(400), Ms(800)], _time.Delays);
        Assert.Equal(3, _retries.Count);
        Assert.Contains(handle.ToString(), _retries[0]);
        Assert.Contains("attempt 1 of 6", _retries[0]);
    }

    [Fact]
    public async Task EveryOperation_IsRetried()
    {
        var store = Retrying();
        var handle = NewHandle(FileKind.Index);
        foreach (var operation in Enum.GetValues<StoreOperation>())
        {
            _faulty.FailNext(operation, 1);
        }

        await store.PutAsync(handle, RandomBytes(10), None);
        Assert.Equal(10, (await store.GetAsync(handle, None)).Length);
        await store.ReadRangeAsync(handle, 2, new byte[8], None);
        Assert.Single(await ListAsync(FileKind.Index));
        Assert.NotNull(await store.StatAsync(handle, None));
        await store.DeleteAsync(handle, None);

        foreach (var operation in Enum.GetValues<StoreOperation>())
        {
            Assert.Equal(2, _faulty.CallCount(operation));
        }
    }

    [Theory]
    [InlineData(StoreErrorKind.Permanent)]
    [InlineData(StoreErrorKind.NotFound)]
    [InlineData(StoreErrorKind.NoSpace)]
    [InlineData(StoreErrorKind.AccessDenied)]
    public async Task NonTransientFailures_AreNotRetried(StoreErrorKind kind)
    {
        _faulty.FailNext(StoreOperation.Put, 1, kind);

        var e = await Assert.ThrowsAsync<StoreException>(() => Retrying().PutAsync(NewHandle(FileKind.Pack), RandomBytes(10), None));

        Assert.Equal(kind, e.Kind);
        Assert.Equal(1, _faulty.CallCount(StoreOperation.Put));
        Assert.Empty(_time.Delays);
        Assert.Empty(_retries);
    }

    [Fact]
    public async Task ArgumentErrors_AreNotRetried()
    {
        await Assert.ThrowsAnyAsync<ArgumentException>(() => Retrying().GetAsync(new StoreHandle(FileKind.Pack, "../x"), None));

        Assert.Empty(_time.Delays);
    }

    [Fact]
    public async Task AfterMaxAttempts_ItGivesUp_WithTheLastError()
    {
        int calls = 0;
        var inner = new DelegatingStore(_memory)
        {
            OnStat = _ => throw new StoreException(StoreErrorKind.Transient, $"failure {Interlocked.Increment(ref calls)}"),
        };
        var store = new RetryingStore(inner, new RetryOptions { MaxAttempts = 4 }, _time, NoJitter);

        var e = await Assert.ThrowsAsync<StoreException>(() => store.StatAsync(NewHandle(FileKind.Lock), None));

        Assert.Equal("failure 4", e.Message);
        Assert.Equal(StoreErrorKind.Transient, e.Kind);
        Assert.Equal(4, calls);
        Assert.Equal(3, _time.Delays.Count);
    }

    [Fact]
    public async Task OneAttempt_MeansNoRetry()
    {
        _faulty.FailNext(StoreOperation.Delete, 1);

        await Assert.ThrowsAsync<StoreException>(() => Retrying(new RetryOptions { MaxAttempts = 1 }).DeleteAsync(NewHandle(FileKind.Pack), None));

        Assert.Equal(1, _faulty.CallCount(StoreOperation.Delete));
    }

    [Fact]
    public async Task Delays_GrowExponentially_UpToTheMaximum()
    {
        _faulty.FailNext(StoreOperation.Stat, 7);
        var options = new RetryOptions { MaxAttempts = 8, InitialDelay = TimeSpan.FromSeconds(1), MaxDelay = TimeSpan.FromSeconds(5) };

        await Retrying(options).StatAsync(NewHandle(FileKind.Pack), None);

        Assert.Equal(new[] { 1, 2, 4, 5, 5, 5, 5 }.Select(s => TimeSpan.FromSeconds(s)), _time.Delays);
    }

    [Fact]
    public void Jitter_KeepsEachDelayBetweenHalfAndAllOfTheCeiling()
    {
        var options = RetryOptions.Default;
        Assert.Equal(Ms(100), options.DelayBefore(1, 0.0));
        Assert.Equal(Ms(150), options.DelayBefore(1, 0.5));
        Assert.Equal(Ms(1600), options.DelayBefore(4, 1.0));
        Assert.Equal(TimeSpan.FromSeconds(10), options.DelayBefore(50, 1.0));
        var random = new Random(42);
        for (int retry = 1; retry < 40; retry++)
        {
            var ceiling = options.DelayBefore(retry, 1.0);
            var delay = options.DelayBefore(retry, random.NextDouble());
            Assert.InRange(delay, ceiling / 2, ceiling);
        }
    }

    [Fact]
    public async Task Waits_UseTheGivenClock()
    {
        var time = new ManualTimeProvider();
        var store = new RetryingStore(_faulty, null, time, NoJitter);
        var handle = NewHandle(FileKind.Pack);
        await _memory.PutAsync(handle, RandomBytes(1), None);
        _faulty.FailNext(StoreOperation.Get, 1);

        var get = store.GetAsync(handle, None);
        await WaitUntil(() => time.Delays.Count == 1);
        time.Advance(Ms(199));
        await Task.Delay(50);
        Assert.False(get.IsCompleted);
        time.Advance(Ms(1));

        Assert.Single(await get.WaitAsync(TimeSpan.FromSeconds(10)));
    }

    [Fact]
    public async Task Cancellation_StopsTheWaiting()
    {
        var time = new ManualTimeProvider();
        var store = new RetryingStore(_faulty, null, time, NoJitter);
        _faulty.FailNext(StoreOperation.Get, 5);
        using var cancel = new CancellationTokenSource();

        var get = store.GetAsync(NewHandle(FileKind.Pack), cancel.Token);
        await WaitUntil(() => time.Delays.Count == 1);
        await cancel.CancelAsync();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => get.WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.Equal(1, _faulty.CallCount(StoreOperation.Get));
    }

    [Fact]
    public async Task AListingThatFailsBeforeItsFirstFile_IsRetriedWhole()
    {
        for (int i = 0; i < 3; i++)
        {
            await _memory.PutAsync(NewHandle(FileKind.Snapshot), RandomBytes(1), None);
        }

        _faulty.FailNext(StoreOperation.List, 2);

        Assert.Equal(3, (await ListAsync(FileKind.Snapshot)).Count);
        Assert.Equal(3, _faulty.CallCount(StoreOperation.List));
        Assert.Equal(2, _retries.Count);
    }

    [Fact]
    public async Task AListingThatFailsAfterYieldingFiles_IsNotRetried()
    {
        for (int i = 0; i < 3; i++)
        {
            await _memory.PutAsync(NewHandle(FileKind.Snapshot), RandomBytes(1), None);
        }

        _faulty.FailListingAfter(2);
        int seen = 0;

        await Assert.ThrowsAsync<StoreException>(async () =>
        {
            await foreach (var _ in Store.ListAsync(FileKind.Snapshot, None))
            {
                seen++;
            }
        });

        Assert.Equal(2, seen);
        Assert.Equal(1, _faulty.CallCount(StoreOperation.List));
    }

    [Fact]
    public async Task AnEmptyListingThatFailsAtItsEnd_IsRetried()
    {
        _faulty.FailListingAfter(0);

        Assert.Empty(await ListAsync(FileKind.Lock));
        Assert.Equal(2, _faulty.CallCount(StoreOperation.List));
    }

    [Fact]
    public void Options_AreChecked()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new RetryingStore(_memory, new RetryOptions { MaxAttempts = 0 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => new RetryingStore(_memory, new RetryOptions { InitialDelay = TimeSpan.FromSeconds(-1) }));
    }

    private static TimeSpan Ms(int milliseconds) => TimeSpan.FromMilliseconds(milliseconds);

    private static async Task WaitUntil(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "timed out waiting for a condition");
            await Task.Delay(5);
        }
    }

    /// <summary>Passes calls to a store, except those a test replaces.</summary>
    private sealed class DelegatingStore(IStore inner) : IStore
    {
        public Func<StoreHandle, Task<StoreFileInfo?>>? OnStat { get; init; }

        public string Location => inner.Location;

        public Task PutAsync(StoreHandle handle, ReadOnlyMemory<byte> data, CancellationToken cancellationToken) => inner.PutAsync(handle, data, cancellationToken);

        public Task<byte[]> GetAsync(StoreHandle handle, CancellationToken cancellationToken) => inner.GetAsync(handle, cancellationToken);

        public Task ReadRangeAsync(StoreHandle handle, long offset, Memory<byte> buffer, CancellationToken cancellationToken) =>
            inner.ReadRangeAsync(handle, offset, buffer, cancellationToken);

        public IAsyncEnumerable<StoreFileInfo> ListAsync(FileKind kind, CancellationToken cancellationToken) => inner.ListAsync(kind, cancellationToken);

        public Task<StoreFileInfo?> StatAsync(StoreHandle handle, CancellationToken cancellationToken) =>
            OnStat is { } onStat ? onStat(handle) : inner.StatAsync(handle, cancellationToken);

        public Task DeleteAsync(StoreHandle handle, CancellationToken cancellationToken) => inner.DeleteAsync(handle, cancellationToken);

        public ValueTask DisposeAsync() => inner.DisposeAsync();
    }
}
