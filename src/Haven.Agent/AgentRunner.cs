using System.Text.Json;
using Haven.Core;
using Haven.Files.Backup;
using Haven.Files.Filters;
using Haven.Files.Restore;
using Haven.Images;
using Haven.Protocol;
using Haven.Repository;
using Haven.Storage;

namespace Haven.Agent;

/// <summary>Timings of <see cref="AgentRunner"/>.</summary>
public sealed record AgentRunOptions
{
    /// <summary>How often a running job reports progress.</summary>
    public TimeSpan ProgressInterval { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>How long the agent waits before dialling again after the server could not be reached.</summary>
    public TimeSpan RetryDelay { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>How long one poll waits on the server for work (the channel over which the server starts jobs at once).</summary>
    public int PollWaitSeconds { get; init; } = 25;

    /// <summary>Where the agent's log lines go.</summary>
    public Action<string> Log { get; init; } = line => Console.Error.WriteLine(line);
}

/// <summary>
/// <c>haven agent run</c>: the daemon on a client. It dials out to the server (so it works behind NAT), says it is
/// ready (at start, and when the server can be reached again after it could not), and keeps a poll open on which
/// the server hands it jobs at once. It runs each job (a plan's backup of files or of a disk image into the tenant's
/// repository, or a restore of either),
/// reports progress every few seconds and a final summary. Final reports go to a queue in the state folder first
/// and are sent from there, so they survive the server being away and the agent being restarted.
/// </summary>
public sealed class AgentRunner(AgentState state, AgentRunOptions? options = null)
{
    private readonly AgentRunOptions _options = options ?? new AgentRunOptions();

    private void Log(string line) => _options.Log($"{DateTimeOffset.Now:yyyy-MM-dd HH:mm:ss} haven agent: {line}");

    /// <summary>Runs until <paramref name="ct"/> is cancelled, or until the server refuses the agent's certificate (revoked).</summary>
    public async Task RunAsync(CancellationToken ct)
    {
        var identity = state.LoadIdentity();
        Log($"client {identity.ClientName} of {identity.ServerUrl}, state in {state.Folder}");
        string? ready = "start";
        ApiClient? api = null; // kept between polls; made again after an outage or a certificate renewal
        try
        {
            while (!ct.IsCancellationRequested)
            {
                try
                {
                    if (ready is not null)
                    {
                        var answer = await AgentClient.ReadyAsync(state, ready, ct).ConfigureAwait(false);
                        Log($"ready ({ready}); the server queued {answer.JobsQueued} job(s)");
                        ready = null;
                        if (answer.RenewCertificate)
                        {
                            api?.Dispose();
                            api = null;
                        }
                    }

                    api ??= AgentClient.Connect(state, TimeSpan.FromSeconds(_options.PollWaitSeconds + 30));
                    await FlushReportsAsync(api, ct).ConfigureAwait(false);
                    var poll = await api.PostAsync<PollResponse>("api/v1/agent/poll", new PollRequest(_options.PollWaitSeconds), ct).ConfigureAwait(false);
                    foreach (var job in poll.Jobs)
                    {
                        await RunJobAsync(api, job, ct).ConfigureAwait(false);
                    }
                }
                catch (OperationCanceledException) when (ct.IsCancellationRequested)
                {
                    break;
                }
                catch (HavenException e) when (e.Code == ErrorCode.Unavailable)
                {
                    if (ready is null)
                    {
                        Log($"the server cannot be reached ({e.Message}); trying again every {_options.RetryDelay.TotalSeconds:0} s");
                    }

                    ready = "network";
                    api?.Dispose();
                    api = null;
                    await DelayAsync(_options.RetryDelay, ct).ConfigureAwait(false);
                }
                catch (HavenException e) when (e.Code == ErrorCode.AccessDenied)
                {
                    Log($"the server refused this agent: {e.Message}");
                    throw;
                }
                catch (HavenException e)
                {
                    Log($"error: {e.Message}");
                    await DelayAsync(_options.RetryDelay, ct).ConfigureAwait(false);
                }
            }
        }
        finally
        {
            api?.Dispose();
        }

        Log("stopped");
    }

    private static async Task DelayAsync(TimeSpan delay, CancellationToken ct)
    {
        try
        {
            await Task.Delay(delay, ct).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }
    }

    // ---- jobs -------------------------------------------------------------------------------------------------

    private async Task RunJobAsync(ApiClient api, JobAssignment job, CancellationToken ct)
    {
        Log($"job {Short(job.JobId)}: {job.Kind}{(job.Plan is { } p ? $" of plan {p.Name}" : "")}");
        var started = DateTimeOffset.UtcNow;
        JobReport final;
        try
        {
            final = job.Kind switch
            {
                "backup" when job.Plan is { Kind: PlanKinds.Image } plan => await ImageBackupAsync(api, job.JobId, plan, ct).ConfigureAwait(false),
                "backup" when job.Plan is { Kind: null or PlanKinds.Files } plan => await BackupAsync(api, job.JobId, plan, ct).ConfigureAwait(false),
                "restore" when job.Restore is { } restore => await RestoreAsync(api, job.JobId, restore, ct).ConfigureAwait(false),
                _ => new JobReport(JobStates.Failed, Message: $"this agent does not know how to run a '{job.Kind}' job (update it)"),
            };
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            final = new JobReport(JobStates.Interrupted, Message: "the agent was stopped while the job ran; the next run resumes it");
        }
        catch (Exception e)
        {
            // Whatever went wrong (a timeout included), the job is reported and the agent goes on serving.
            final = new JobReport(JobStates.Failed, Message: e.Message + (e is HavenException { Hint: { } hint } ? $" ({hint})" : ""));
        }

        final = final with { Time = DateTimeOffset.UtcNow };
        Log($"job {Short(job.JobId)}: {final.State} after {(DateTimeOffset.UtcNow - started).TotalSeconds:0.0} s{(final.Message is { } m ? ": " + m : "")}");
        // The final report is written down before it is sent: it must reach the server even if the agent is killed
        // or the server is away right now.
        EnqueueReport(job.JobId, final);
        try
        {
            await FlushReportsAsync(api, CancellationToken.None).ConfigureAwait(false);
        }
        catch (HavenException e) when (e.Code == ErrorCode.Unavailable)
        {
            Log($"the report of job {Short(job.JobId)} waits in the queue: {e.Message}");
        }
    }

    private static string Short(string id) => id.Length > 8 ? id[..8] : id;

    private static Task SendReportAsync(ApiClient api, string jobId, JobReport report, CancellationToken ct) =>
        api.PostAsync<JsonElement?>($"api/v1/agent/jobs/{jobId}/report", report, ct);

    /// <summary>
    /// Waits for <paramref name="work"/>, reporting <paramref name="stateName"/> with <paramref name="progress"/> every
    /// <see cref="AgentRunOptions.ProgressInterval"/> so the server knows the job is alive. The wait itself ignores
    /// cancellation: the work sees the token and ends, and it must end before its repository and lock are released.
    /// A failed progress report is not an error (the next one, or the final report, follows).
    /// </summary>
    private async Task<T> ReportWhileAsync<T>(ApiClient api, string jobId, string stateName, Task<T> work, Func<JobProgress> progress, CancellationToken ct)
    {
        while (await Task.WhenAny(work, Task.Delay(_options.ProgressInterval, CancellationToken.None)).ConfigureAwait(false) != work)
        {
            if (ct.IsCancellationRequested)
            {
                continue;
            }

            try
            {
                await SendReportAsync(api, jobId, new JobReport(stateName, progress()), ct).ConfigureAwait(false);
            }
            catch (Exception e) when (e is HavenException or OperationCanceledException)
            {
            }
        }

        return await work.ConfigureAwait(false);
    }

    /// <summary>The tenant's repository: the key from enrolment, retries long enough to ride out a server restart.</summary>
    private async Task<Repository.Repository> OpenRepositoryAsync(long? bandwidth, CancellationToken ct)
    {
        string secret = state.LoadRepositoryKey()?.Secret
            ?? throw new HavenException(ErrorCode.WrongPassword, "this agent holds no key of the tenant's repository", "enrol it with a token made by 'haven admin token-create --repository-key'");
        IStore store = AgentClient.OpenRepositoryStore(state);
        if (bandwidth is { } limit)
        {
            store = new ThrottledStore(store, limit);
        }

        store = new RetryingStore(store, new RetryOptions { MaxAttempts = 12, MaxDelay = TimeSpan.FromSeconds(10) });
        try
        {
            var repo = await Repository.Repository.OpenAsync(store, secret, null, ct).ConfigureAwait(false);
            repo.UseCache(Path.Combine(state.Folder, "cache"));
            await repo.LoadIndexAsync(ct).ConfigureAwait(false);
            return repo;
        }
        catch
        {
            await store.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    private async Task<JobReport> BackupAsync(ApiClient api, string jobId, PlanSpec plan, CancellationToken ct)
    {
        await using var repo = await OpenRepositoryAsync(plan.BandwidthBytesPerSecond, ct).ConfigureAwait(false);
        await using var repoLock = await RepositoryLock.AcquireAsync(repo, exclusive: false, "backup", TimeSpan.FromMinutes(5), ct).ConfigureAwait(false);
        var excludes = new PatternSet();
        foreach (var e in plan.Excludes ?? [])
        {
            excludes.Add(e, false);
        }

        var identity = state.LoadIdentity();
        var options = new BackupOptions
        {
            Paths = plan.Paths,
            Excludes = excludes,
            Host = identity.ClientName,
            Tags = [$"plan:{plan.Name}"],
            CacheRoot = Path.Combine(state.Folder, "cache"),
            Writer = new BlobWriterOptions { SpoolDirectory = Path.Combine(state.Folder, "spool"), UploadConcurrency = 4 },
            BeforeCommit = repoLock.EnsureValid,
        };
        var archiver = new Archiver(repo, options);
        var result = await ReportWhileAsync(api, jobId, JobStates.Running, archiver.RunAsync(ct), () =>
        {
            var p = archiver.Progress;
            return new JobProgress(p.FilesDone, p.FilesTotal, p.BytesDone, p.BytesTotal, p.Errors, DateTimeOffset.UtcNow);
        }, ct).ConfigureAwait(false);
        var sum = result.Snapshot.Summary!;
        var stats = new JobStats(sum.FilesNew, sum.FilesChanged, sum.FilesUnmodified, 0, sum.TotalBytesProcessed, sum.DataAdded, sum.DataAddedStored, result.BytesFoundInCatalog, result.ErrorCount, (sum.BackupEnd - sum.BackupStart).TotalSeconds);
        var last = new JobProgress(sum.TotalFilesProcessed, sum.TotalFilesProcessed, sum.TotalBytesProcessed, sum.TotalBytesProcessed, result.ErrorCount, DateTimeOffset.UtcNow);

        // Verifying: the snapshot must read back, and every chunk it names must be in the repository's index. Chunks
        // another client stored (the catalog's answers) are in index files this agent has not loaded yet.
        if (result.BlobsFoundInCatalog > 0)
        {
            await repo.LoadIndexAsync(ct).ConfigureAwait(false);
        }

        string? problem = await ReportWhileAsync(api, jobId, JobStates.Verifying, VerifyAsync(repo, result.SnapshotId!.Value, ct), () => last with { Time = DateTimeOffset.UtcNow }, ct).ConfigureAwait(false);
        if (problem is not null)
        {
            return new JobReport(JobStates.Failed, last, stats, result.SnapshotId.ToString(), problem);
        }

        string? message = result.ErrorCount > 0
            ? $"{result.ErrorCount} item(s) could not be read: " + string.Join("; ", result.Warnings.Where(w => w.IsError).Take(5).Select(w => $"{w.Path}: {w.Message}"))
            : result.RecoveredPacks > 0 ? $"resumed: {result.RecoveredPacks} pack(s) of an interrupted run were reused" : null;
        return new JobReport(result.ErrorCount > 0 ? JobStates.Partial : JobStates.Succeeded, last, stats, result.SnapshotId.ToString(), message);
    }

    /// <summary>The changed-block maps of the disks this agent reads and writes, in its cache.</summary>
    private static TargetMaps? MapsOf(Repository.Repository repo) => repo.Cache is { } cache ? new TargetMaps(cache.Directory, repo.Key) : null;

    /// <summary>An image plan: its one disk, partition or image file, block by block (as <c>haven image backup</c>).</summary>
    private async Task<JobReport> ImageBackupAsync(ApiClient api, string jobId, PlanSpec plan, CancellationToken ct)
    {
        await using var repo = await OpenRepositoryAsync(plan.BandwidthBytesPerSecond, ct).ConfigureAwait(false);
        await using var repoLock = await RepositoryLock.AcquireAsync(repo, exclusive: false, "image backup", TimeSpan.FromMinutes(5), ct).ConfigureAwait(false);
        var backup = new ImageBackup(repo, new ImageBackupOptions
        {
            Source = plan.Paths[0],
            BlockSize = plan.BlockSize,
            Host = state.LoadIdentity().ClientName,
            Tags = [$"plan:{plan.Name}"],
            Writer = new BlobWriterOptions { SpoolDirectory = Path.Combine(state.Folder, "spool"), UploadConcurrency = 4 },
            WrittenPaths = [state.Folder, Path.GetTempPath()],
            Maps = MapsOf(repo),
        });
        var started = DateTimeOffset.UtcNow;
        var result = await ReportWhileAsync(api, jobId, JobStates.Running, backup.RunAsync(ct), () => ImageProgress(backup.Progress), ct).ConfigureAwait(false);
        var image = result.Snapshot.Image!;
        var stats = new JobStats(image.Generation == 1 ? 1 : 0, image.Generation > 1 && image.BlocksChanged > 0 ? 1 : 0, image.Generation > 1 && image.BlocksChanged == 0 ? 1 : 0, 0,
            result.BytesRead, result.BytesAdded, result.BytesStored, 0, 0, (DateTimeOffset.UtcNow - started).TotalSeconds);
        var last = ImageProgress(backup.Progress);
        string? problem = await ReportWhileAsync(api, jobId, JobStates.Verifying, VerifyAsync(repo, result.SnapshotId, ct), () => last with { Time = DateTimeOffset.UtcNow }, ct).ConfigureAwait(false);
        string message = $"image of {plan.Paths[0]}: generation {image.Generation}, {image.BlocksChanged} of {image.Blocks} blocks changed, {image.Consistency}"
            + string.Concat(result.Warnings.Concat(result.Notes).Select(w => "; " + w));
        return new JobReport(problem is null ? JobStates.Succeeded : JobStates.Failed, last, stats, result.SnapshotId.ToString(), problem ?? message);
    }

    private static JobProgress ImageProgress(ImageProgress p) => new(p.BlocksDone, p.Blocks, p.BytesRead, p.BytesRead, 0, DateTimeOffset.UtcNow);

    /// <summary>Null when the snapshot loads and all its trees and chunks are indexed; else what is wrong.</summary>
    private static async Task<string?> VerifyAsync(Repository.Repository repo, ObjectId snapshotId, CancellationToken ct)
    {
        var snapshot = await repo.LoadSnapshotAsync(snapshotId, ct).ConfigureAwait(false);
        var pending = new Stack<ObjectId>([snapshot.TreeId]);
        var seen = new HashSet<ObjectId>();
        while (pending.TryPop(out var tree))
        {
            if (!seen.Add(tree))
            {
                continue;
            }

            foreach (var node in await repo.LoadTreeAsync(tree, ct).ConfigureAwait(false))
            {
                if (node.Subtree is { } sub)
                {
                    pending.Push(sub);
                }

                foreach (var blob in node.Content ?? [])
                {
                    if (!repo.Index.Contains(blob))
                    {
                        return $"verification failed: snapshot {snapshotId.Short} names chunk {blob.Short}, which the repository does not hold";
                    }
                }
            }
        }

        return null;
    }

    private async Task<JobReport> RestoreAsync(ApiClient api, string jobId, RestoreSpec spec, CancellationToken ct)
    {
        await using var repo = await OpenRepositoryAsync(null, ct).ConfigureAwait(false);
        await using var repoLock = await RepositoryLock.AcquireAsync(repo, exclusive: false, "restore", TimeSpan.FromMinutes(5), ct).ConfigureAwait(false);
        var (id, snapshot) = await repo.FindSnapshotAsync(spec.Snapshot, null, ct).ConfigureAwait(false);
        if (snapshot.Image is not null)
        {
            return await ImageRestoreAsync(api, jobId, repo, id, snapshot, spec, ct).ConfigureAwait(false);
        }

        var includes = new PatternSet();
        foreach (var path in spec.Paths ?? [])
        {
            includes.Add(path, false);
        }

        var restorer = new Restorer(repo, new RestoreOptions { Target = spec.Target, Includes = includes, Verify = true });
        var started = DateTimeOffset.UtcNow;
        var result = await ReportWhileAsync(api, jobId, JobStates.Running, restorer.RunAsync(snapshot.TreeId, ct), () =>
        {
            var p = restorer.Progress;
            return new JobProgress(p.FilesDone, p.FilesTotal, p.BytesDone, p.BytesTotal, p.Errors, DateTimeOffset.UtcNow);
        }, ct).ConfigureAwait(false);
        var stats = new JobStats(0, 0, 0, result.Files, result.Bytes, 0, 0, 0, result.Errors.Count, (DateTimeOffset.UtcNow - started).TotalSeconds);
        var last = new JobProgress(result.Files, result.Files, result.Bytes, result.Bytes, result.Errors.Count, DateTimeOffset.UtcNow);
        string message = $"restored snapshot {id.Short} ({result.Files} files, {result.Verified} verified) to {spec.Target}"
            + (result.Errors.Count > 0 ? $"; {result.Errors.Count} entries failed: {string.Join("; ", result.Errors.Take(5))}" : "");
        return new JobReport(result.Errors.Count > 0 ? JobStates.Partial : JobStates.Succeeded, last, stats, id.ToString(), message);
    }

    /// <summary>An image snapshot onto a disk or image file of the client (as <c>haven image restore</c>, never forced).</summary>
    private async Task<JobReport> ImageRestoreAsync(ApiClient api, string jobId, Repository.Repository repo, ObjectId id, Repository.Model.Snapshot snapshot, RestoreSpec spec, CancellationToken ct)
    {
        if (spec.Paths is { Count: > 0 })
        {
            return new JobReport(JobStates.Failed, Message: $"snapshot {id.Short} is a disk image: it is restored whole, not by paths");
        }

        var map = await ImageSnapshots.LoadMapAsync(repo, id, snapshot, ct).ConfigureAwait(false);
        var restore = new ImageRestore(repo, new ImageRestoreOptions { Targets = [spec.Target], Grow = spec.Grow, Maps = MapsOf(repo) });
        var started = DateTimeOffset.UtcNow;
        var result = await ReportWhileAsync(api, jobId, JobStates.Running, restore.RunAsync(id, map, ct), () => ImageProgress(restore.Progress(map.Entries.LongLength)), ct).ConfigureAwait(false);
        var stats = new JobStats(0, 0, 0, 1, result.BytesWritten, 0, 0, 0, result.Errors.Count, (DateTimeOffset.UtcNow - started).TotalSeconds);
        var last = new JobProgress(result.BlocksWritten, map.Entries.LongLength, result.BytesWritten, result.BytesWritten, result.Errors.Count, DateTimeOffset.UtcNow);
        string message = $"restored image snapshot {id.Short} to {spec.Target}: {result.BlocksVerified} block writes verified, {result.BlocksUnchanged} left as they were"
            + string.Concat(result.Notes.Concat(result.Adjustments).Select(n => "; " + n))
            + (result.Errors.Count > 0 ? $"; {result.Errors.Count} block(s) failed: {string.Join("; ", result.Errors.Take(5))}" : "");
        return new JobReport(result.Errors.Count > 0 ? JobStates.Partial : JobStates.Succeeded, last, stats, id.ToString(), message);
    }

    // ---- the report queue -------------------------------------------------------------------------------------

    private string QueueFolder => Path.Combine(state.Folder, "queue");

    private void EnqueueReport(string jobId, JobReport report)
    {
        Directory.CreateDirectory(QueueFolder);
        string name = $"{DateTimeOffset.UtcNow.UtcTicks:D20}-{jobId}.json";
        string temp = Path.Combine(QueueFolder, name + ".tmp");
        File.WriteAllText(temp, JsonSerializer.Serialize(report, ProtocolJson.Options));
        File.Move(temp, Path.Combine(QueueFolder, name));
    }

    /// <summary>Sends queued final reports, oldest first; stops at the first that cannot be delivered.</summary>
    private async Task FlushReportsAsync(ApiClient api, CancellationToken ct)
    {
        if (!Directory.Exists(QueueFolder))
        {
            return;
        }

        foreach (var file in Directory.EnumerateFiles(QueueFolder, "*.json").Order(StringComparer.Ordinal).ToList())
        {
            string name = Path.GetFileNameWithoutExtension(file);
            string jobId = name[(name.IndexOf('-', StringComparison.Ordinal) + 1)..];
            JobReport? report;
            try
            {
                report = JsonSerializer.Deserialize<JobReport>(await File.ReadAllTextAsync(file, ct).ConfigureAwait(false), ProtocolJson.Options);
            }
            catch (JsonException)
            {
                report = null;
            }

            if (report is not null)
            {
                try
                {
                    await SendReportAsync(api, jobId, report, ct).ConfigureAwait(false);
                }
                catch (HavenException e) when (e.Code is ErrorCode.NotFound or ErrorCode.Usage)
                {
                    Log($"the server dropped the report of job {Short(jobId)}: {e.Message}");
                }
            }

            File.Delete(file);
        }
    }
}
