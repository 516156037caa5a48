using System.Diagnostics;
using System.Text.Json;
using Haven.Core;
using Haven.Repository.Model;
using Haven.Storage;

namespace Haven.Repository;

/// <summary>
/// Lock files (normative: docs/design/repository-format.md, "Locks"). Backups, copies and checks hold shared locks;
/// prune, forget's deletion and repair hold an exclusive one. A lock is refreshed every <see cref="RefreshInterval"/>
/// by writing a new file and deleting the old; a lock not refreshed for <see cref="StaleAfter"/> is stale and
/// ignored (and removed by <c>unlock</c>). Failure mode, documented: a process paused longer than StaleAfter
/// (suspended laptop) loses its lock's protection; it notices at its next refresh and aborts before writing a snapshot.
/// </summary>
public sealed class RepositoryLock : IAsyncDisposable
{
    public static readonly TimeSpan RefreshInterval = TimeSpan.FromMinutes(5);
    public static readonly TimeSpan StaleAfter = TimeSpan.FromMinutes(30);

    private readonly Repository _repo;
    private readonly LockInfo _info;
    private readonly CancellationTokenSource _stop = new();
    private ObjectId _current;
    private Task? _refresher;
    private long _lastRefreshTicks;
    private DateTimeOffset _lastRefreshWall;

    private RepositoryLock(Repository repo, LockInfo info)
    {
        _repo = repo;
        _info = info;
    }

    public bool Exclusive => _info.Exclusive;

    /// <summary>
    /// Takes a lock, waiting up to <paramref name="retryFor"/> while conflicting locks exist.
    /// Throws <see cref="ErrorCode.LockConflict"/> naming the holder when it cannot.
    /// </summary>
    public static async Task<RepositoryLock> AcquireAsync(Repository repo, bool exclusive, string purpose, TimeSpan retryFor, CancellationToken ct)
    {
        var deadline = repo.Time.GetTimestamp();
        var info = new LockInfo
        {
            Exclusive = exclusive,
            Hostname = Environment.MachineName,
            Username = Environment.UserName,
            Pid = Environment.ProcessId,
            Purpose = purpose,
        };
        var delay = TimeSpan.FromMilliseconds(250);
        while (true)
        {
            var l = new RepositoryLock(repo, info);
            await l.WriteAsync(ct).ConfigureAwait(false);
            var conflict = await l.FindConflictAsync(ct).ConfigureAwait(false);
            if (conflict is null)
            {
                l._refresher = l.RefreshLoopAsync();
                return l;
            }

            await repo.Store.DeleteAsync(new StoreHandle(FileKind.Lock, l._current.ToString()), ct).ConfigureAwait(false);
            if (repo.Time.GetElapsedTime(deadline) >= retryFor)
            {
                var c = conflict.Value.Info;
                throw new HavenException(ErrorCode.LockConflict,
                    $"the repository is locked {(c.Exclusive ? "exclusively" : "")} by {c.Purpose} (pid {c.Pid} on {c.Hostname}, user {c.Username}, since {c.Time:u}), lock {conflict.Value.Id.Short}",
                    "wait for it to finish, pass --retry-lock DURATION, or remove a stale lock with 'haven unlock' if that process is gone");
            }

            await Task.Delay(delay, repo.Time, ct).ConfigureAwait(false);
            delay = TimeSpan.FromMilliseconds(Math.Min(delay.TotalMilliseconds * 2, 5000));
        }
    }

    private async Task WriteAsync(CancellationToken ct)
    {
        var old = _current;
        var info = _info with { Time = _repo.Time.GetUtcNow() };
        _current = await _repo.SaveSealedAsync(FileKind.Lock, JsonSerializer.SerializeToUtf8Bytes(info, RepositoryJson.Default.LockInfo), ct).ConfigureAwait(false);
        _lastRefreshTicks = _repo.Time.GetTimestamp();
        _lastRefreshWall = _repo.Time.GetUtcNow();
        if (!old.IsZero)
        {
            await _repo.Store.DeleteAsync(new StoreHandle(FileKind.Lock, old.ToString()), ct).ConfigureAwait(false);
        }
    }

    private async Task<(ObjectId Id, LockInfo Info)?> FindConflictAsync(CancellationToken ct)
    {
        foreach (var (id, info) in await ListLocksAsync(_repo, ct).ConfigureAwait(false))
        {
            if (id == _current || IsStale(_repo, info))
            {
                continue;
            }

            if (_info.Exclusive || info.Exclusive)
            {
                return (id, info);
            }
        }

        return null;
    }

    public static bool IsStale(Repository repo, LockInfo info)
    {
        if (repo.Time.GetUtcNow() - info.Time > StaleAfter)
        {
            return true;
        }

        // A lock of a process on this host that no longer runs is stale at once.
        if (info.Hostname == Environment.MachineName && info.Pid != Environment.ProcessId)
        {
            try
            {
                using var p = Process.GetProcessById(info.Pid);
                return p.HasExited;
            }
            catch (ArgumentException)
            {
                return true;
            }
        }

        return false;
    }

    public static async Task<List<(ObjectId Id, LockInfo Info)>> ListLocksAsync(Repository repo, CancellationToken ct)
    {
        var result = new List<(ObjectId, LockInfo)>();
        foreach (var id in await repo.ListAsync(FileKind.Lock, ct).ConfigureAwait(false))
        {
            try
            {
                var plain = await repo.LoadSealedAsync(FileKind.Lock, id, ct).ConfigureAwait(false);
                var info = JsonSerializer.Deserialize(plain, RepositoryJson.Default.LockInfo);
                if (info is not null)
                {
                    result.Add((id, info));
                }
            }
            catch (HavenException)
            {
                // Removed meanwhile, or unreadable: an unreadable lock cannot be honoured; 'unlock' removes it.
            }
        }

        return result;
    }

    /// <summary>Throws when this lock may have expired (e.g. the machine slept); call before committing a snapshot.</summary>
    public void EnsureValid()
    {
        // Both clocks: the monotonic one does not advance while the machine sleeps, the wall clock does (and other
        // hosts judge staleness by the wall-clock time in the lock file).
        var limit = StaleAfter - TimeSpan.FromMinutes(1);
        if (_repo.Time.GetElapsedTime(_lastRefreshTicks) > limit || _repo.Time.GetUtcNow() - _lastRefreshWall > limit)
        {
            throw new HavenException(ErrorCode.LockConflict, "this process's lock expired (was the machine asleep?); nothing was committed", "run the command again");
        }
    }

    private async Task RefreshLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            try
            {
                await Task.Delay(RefreshInterval, _repo.Time, _stop.Token).ConfigureAwait(false);
                await WriteAsync(_stop.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (_stop.IsCancellationRequested)
            {
                return;
            }
            catch (Exception)
            {
                // A failed refresh is retried at the next interval; EnsureValid guards every commit.
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        if (_refresher is not null)
        {
            await _refresher.ConfigureAwait(false);
        }

        try
        {
            await _repo.Store.DeleteAsync(new StoreHandle(FileKind.Lock, _current.ToString()), CancellationToken.None).ConfigureAwait(false);
        }
        catch (StoreException)
        {
            // Left behind: it goes stale and 'unlock' removes it.
        }

        _stop.Dispose();
    }

    /// <summary>Removes stale locks (or all, with <paramref name="all"/>); returns how many.</summary>
    public static async Task<int> RemoveAsync(Repository repo, bool all, CancellationToken ct)
    {
        int removed = 0;
        foreach (var (id, info) in await ListLocksAsync(repo, ct).ConfigureAwait(false))
        {
            if (all || IsStale(repo, info))
            {
                await repo.Store.DeleteAsync(new StoreHandle(FileKind.Lock, id.ToString()), ct).ConfigureAwait(false);
                removed++;
            }
        }

        return removed;
    }
}
