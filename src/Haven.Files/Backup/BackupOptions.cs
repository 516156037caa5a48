using Haven.Core;
using Haven.Files.Filters;

namespace Haven.Files.Backup;

/// <summary>What to back up and how. Paths may be relative; they are made absolute against the working directory.</summary>
public sealed record BackupOptions
{
    public required IReadOnlyList<string> Paths { get; init; }

    public string Host { get; init; } = Environment.MachineName;

    public IReadOnlyList<string> Tags { get; init; } = [];

    public PatternSet Excludes { get; init; } = new();

    /// <summary>Marker file names (optionally "name:header") whose presence excludes their directory.</summary>
    public IReadOnlyList<string> ExcludeIfPresent { get; init; } = [];

    /// <summary>Skip directories tagged with a CACHEDIR.TAG (https://bford.info/cachedir/).</summary>
    public bool ExcludeCaches { get; init; }

    public bool OneFileSystem { get; init; }

    public long? ExcludeLargerThan { get; init; }

    /// <summary>Read and hash everything but store nothing.</summary>
    public bool DryRun { get; init; }

    /// <summary>Files read at once. Two saturate both cores of the reference machine on the benchmark data set.</summary>
    public int ReadConcurrency { get; init; } = 2;

    /// <summary>Compression workers; defaults to the core count.</summary>
    public int EncodeConcurrency { get; init; } = Environment.ProcessorCount;

    /// <summary>The snapshot to compare with; null picks the latest of the same host and paths.</summary>
    public ObjectId? Parent { get; init; }

    /// <summary>Read every file, ignoring the parent's metadata.</summary>
    public bool Force { get; init; }

    /// <summary>Cache root for the upload journal (null: <see cref="Haven.Repository.UploadJournal.DefaultCacheRoot"/>).</summary>
    public string? CacheRoot { get; init; }

    /// <summary>How packs are built and uploaded (spool folder, upload concurrency); null: in memory, the defaults.</summary>
    public Haven.Repository.BlobWriterOptions? Writer { get; init; }

    /// <summary>
    /// Called after all data and index are stored and right before the snapshot is written; throwing aborts the
    /// commit. The CLI checks here that its repository lock is still valid.
    /// </summary>
    public Action? BeforeCommit { get; init; }

    /// <summary>Overrides the snapshot time (for tests and imports).</summary>
    public DateTimeOffset? Time { get; init; }
}

/// <summary>Progress of a running backup; totals grow while the scanner runs ahead.</summary>
public readonly record struct BackupProgress(
    long FilesDone, long BytesDone, long FilesTotal, long BytesTotal, bool ScanFinished,
    long FilesNew, long FilesChanged, long FilesUnmodified, long BytesAdded, long Errors, TimeSpan Elapsed);

/// <summary>A problem with one source entry that did not stop the backup.</summary>
public sealed record BackupWarning(string Path, string Message, bool IsError);
