using System.Runtime.CompilerServices;

namespace Haven.Storage;

/// <summary>
/// How <see cref="RetryingStore"/> retries. The delay before retry n (n = 1, 2, …) is
/// <c>min(MaxDelay, InitialDelay · 2^(n-1))</c>, scaled by a random factor in [0.5, 1) so that many clients that
/// failed together do not retry together. With the defaults a call gives up after six attempts and about
/// 3–6 s of waiting, which rides out a gateway restart or a burst of throttling without hiding an outage.
/// </summary>
public sealed record RetryOptions
{
    public static RetryOptions Default { get; } = new();

    /// <summary>Attempts in all, the first one included; 1 means no retry.</summary>
    public int MaxAttempts { get; init; } = 6;

    public TimeSpan InitialDelay { get; init; } = TimeSpan.FromMilliseconds(200);

    public TimeSpan MaxDelay { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>The delay before retry <paramref name="retry"/> (1-based), given a random number in [0, 1).</summary>
    public TimeSpan DelayBefore(int retry, double random)
    {
        double factor = Math.Pow(2, Math.Min(retry - 1, 30));
        double ceiling = Math.Min(MaxDelay.Ticks, InitialDelay.Ticks * factor);
        double jitter = 0.5 + (0.5 * Math.Clamp(random, 0, 1));
        return TimeSpan.FromTicks((long)(ceiling * jitter));
    }
}

/// <summary>
/// Wraps a store and retries calls that fail with <see cref="StoreErrorKind.Transient"/>, waiting with exponential
/// backoff and jitter between attempts (see <see cref="RetryOptions"/>). Every other error, and cancellation,
/// passes straight through. Retrying is safe because every store operation is idempotent: puts are atomic and
/// write-once, deletes of missing files succeed.
/// <para>
/// A listing is retried as a whole only while it has produced nothing; once it has yielded a file, a failure is
/// rethrown, since a restarted listing would repeat what the caller already has.
/// </para>
/// Thread-safe when the inner store is; it keeps no state between calls.
/// </summary>
public sealed class RetryingStore : IStore
{
    private readonly IStore _inner;
    private readonly RetryOptions _options;
    private readonly TimeProvider _time;
    private readonly Func<double> _random;
    private readonly Action<string>? _onRetry;

    /// <param name="inner">The store to call; disposed with this one.</param>
    /// <param name="options">Defaults to <see cref="RetryOptions.Default"/>.</param>
    /// <param name="timeProvider">Clock for the waits; tests pass a fake one.</param>
    /// <param name="random">Source of numbers in [0, 1) for the jitter; must be thread-safe. Defaults to <see cref="Random.Shared"/>.</param>
    /// <param name="onRetry">Told about each retry (what failed, why, and the wait), e.g. to log it. Called on the failing call's thread.</param>
    public RetryingStore(
        IStore inner,
        RetryOptions? options = null,
        TimeProvider? timeProvider = null,
        Func<double>? random = null,
        Action<string>? onRetry = null)
    {
        ArgumentNullException.ThrowIfNull(inner);
        _inner = inner;
        _options = options ?? RetryOptions.Default;
        ArgumentOutOfRangeException.ThrowIfLessThan(_options.MaxAttempts, 1, nameof(options));
        ArgumentOutOfRangeException.ThrowIfLessThan(_options.InitialDelay, TimeSpan.Zero, nameof(options));
        _time = timeProvider ?? TimeProvider.System;
        _random = random ?? (static () => Random.Shared.NextDouble());
        _onRetry = onRetry;
    }

    public string Location => _inner.Location;

    /// <summary>The inner store's catalog, unwrapped: its calls are advice and fail soft (see <see cref="IChunkCatalog"/>).</summary>
    public IChunkCatalog? Catalog => _inner.Catalog;

    public Task PutAsync(StoreHandle handle, ReadOnlyMemory<byte> data, CancellationToken cancellationToken) =>
        RunAsync("put", handle, ct => _inner.PutAsync(handle, data, ct), cancellationToken);

    public Task PutFileAsync(StoreHandle handle, string path, CancellationToken cancellationToken) =>
        RunAsync("put", handle, ct => _inner.PutFileAsync(handle, path, ct), cancellationToken);

    public Task<byte[]> GetAsync(StoreHandle handle, CancellationToken cancellationToken) =>
        RunAsync("get", handle, ct => _inner.GetAsync(handle, ct), cancellationToken);

    public Task ReadRangeAsync(StoreHandle handle, long offset, Memory<byte> buffer, CancellationToken cancellationToken) =>
        RunAsync("read range of", handle, ct => _inner.ReadRangeAsync(handle, offset, buffer, ct), cancellationToken);

    public Task<StoreFileInfo?> StatAsync(StoreHandle handle, CancellationToken cancellationToken) =>
        RunAsync("stat", handle, ct => _inner.StatAsync(handle, ct), cancellationToken);

    public Task DeleteAsync(StoreHandle handle, CancellationToken cancellationToken) =>
        RunAsync("delete", handle, ct => _inner.DeleteAsync(handle, ct), cancellationToken);

    public async IAsyncEnumerable<StoreFileInfo> ListAsync(FileKind kind, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        for (int attempt = 1; ; attempt++)
        {
            await using var items = _inner.ListAsync(kind, cancellationToken).GetAsyncEnumerator(cancellationToken);
            bool any;
            StoreException? failure = null;
            try
            {
                any = await items.MoveNextAsync().ConfigureAwait(false);
            }
            catch (StoreException e) when (e.IsTransient && attempt < _options.MaxAttempts)
            {
                any = false;
                failure = e;
            }

            if (failure is not null)
            {
                await WaitAsync($"list {StoreLayout.FolderOf(kind)}", failure, attempt, cancellationToken).ConfigureAwait(false);
                continue;
            }

            if (!any)
            {
                yield break;
            }

            yield return items.Current;
            while (await items.MoveNextAsync().ConfigureAwait(false))
            {
                yield return items.Current;
            }

            yield break;
        }
    }

    public ValueTask DisposeAsync() => _inner.DisposeAsync();

    private async Task RunAsync(string verb, StoreHandle handle, Func<CancellationToken, Task> call, CancellationToken cancellationToken)
    {
        for (int attempt = 1; ; attempt++)
        {
            try
            {
                await call(cancellationToken).ConfigureAwait(false);
                return;
            }
            catch (StoreException e) when (e.IsTransient && attempt < _options.MaxAttempts)
            {
                await WaitAsync($"{verb} {handle}", e, attempt, cancellationToken).ConfigureAwait(false);
            }
        }
    }

    private async Task<T> RunAsync<T>(string verb, StoreHandle handle, Func<CancellationToken, Task<T>> call, CancellationToken cancellationToken)
    {
        for (int attempt = 1; ; attempt++)
        {
            try
            {
                return await call(cancellationToken).ConfigureAwait(false);
            }
            catch (StoreException e) when (e.IsTransient && attempt < _options.MaxAttempts)
            {
                await WaitAsync($"{verb} {handle}", e, attempt, cancellationToken).ConfigureAwait(false);
            }
        }
    }

    private Task WaitAsync(string what, StoreException failure, int attempt, CancellationToken cancellationToken)
    {
        var delay = _options.DelayBefore(attempt, _random());
        _onRetry?.Invoke(
            $"{what} in {_inner.Location} failed (attempt {attempt} of {_options.MaxAttempts}): {failure.Message}; retrying in {delay.TotalSeconds:0.###} s");
        return Task.Delay(delay, _time, cancellationToken);
    }
}
