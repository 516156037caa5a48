using System.Text.Json;
using System.Text.Json.Serialization;
using Haven.Core;

namespace Haven.Repository.Model;

/// <summary>What an image snapshot holds: its size and block size, its generation and how its blocks were found.</summary>
public sealed record ImageSummary
{
    [JsonPropertyName("size")] public long Size { get; init; }
    [JsonPropertyName("block_size")] public int BlockSize { get; init; }

    /// <summary>1 for the first image snapshot of a source, one more for each later one.</summary>
    [JsonPropertyName("generation")] public uint Generation { get; init; }
    [JsonPropertyName("blocks")] public long Blocks { get; init; }
    [JsonPropertyName("blocks_data")] public long BlocksData { get; init; }
    [JsonPropertyName("blocks_zero")] public long BlocksZero { get; init; }
    [JsonPropertyName("blocks_hole")] public long BlocksHole { get; init; }
    [JsonPropertyName("blocks_free")] public long BlocksFree { get; init; }

    /// <summary>Blocks whose content differs from the previous generation's (all used blocks in generation 1).</summary>
    [JsonPropertyName("blocks_changed")] public long BlocksChanged { get; init; }

    /// <summary>"frozen" (the filesystem was frozen), "snapshot" (an LVM snapshot was read), or "crash-consistent".</summary>
    [JsonPropertyName("consistency")] public string Consistency { get; init; } = "crash-consistent";

    /// <summary>The partition table found at the start of the image: "gpt", "mbr" or "none".</summary>
    [JsonPropertyName("partition_table")] public string PartitionTable { get; init; } = "none";
}

/// <summary>What a backup did, stored with its snapshot.</summary>
public sealed record SnapshotSummary
{
    [JsonPropertyName("backup_start")] public DateTimeOffset BackupStart { get; init; }
    [JsonPropertyName("backup_end")] public DateTimeOffset BackupEnd { get; init; }
    [JsonPropertyName("files_new")] public long FilesNew { get; init; }
    [JsonPropertyName("files_changed")] public long FilesChanged { get; init; }
    [JsonPropertyName("files_unmodified")] public long FilesUnmodified { get; init; }
    [JsonPropertyName("files_removed")] public long FilesRemoved { get; init; }
    [JsonPropertyName("dirs_new")] public long DirsNew { get; init; }
    [JsonPropertyName("dirs_changed")] public long DirsChanged { get; init; }
    [JsonPropertyName("dirs_unmodified")] public long DirsUnmodified { get; init; }
    [JsonPropertyName("data_blobs")] public long DataBlobs { get; init; }
    [JsonPropertyName("tree_blobs")] public long TreeBlobs { get; init; }
    [JsonPropertyName("data_added")] public long DataAdded { get; init; }
    [JsonPropertyName("data_added_stored")] public long DataAddedStored { get; init; }
    [JsonPropertyName("total_files_processed")] public long TotalFilesProcessed { get; init; }
    [JsonPropertyName("total_bytes_processed")] public long TotalBytesProcessed { get; init; }
    [JsonPropertyName("errors")] public long Errors { get; init; }
}

/// <summary>
/// A snapshot file (<c>snapshots/&lt;sha256&gt;</c>): JSON sealed like an index file. It is written last, after every
/// pack and index it depends on, so a snapshot is visible only when complete.
/// </summary>
public sealed record Snapshot
{
    public const int CurrentVersion = 1;

    [JsonPropertyName("version")] public int Version { get; init; } = CurrentVersion;
    [JsonPropertyName("time")] public DateTimeOffset Time { get; init; }
    [JsonPropertyName("tree")] public required string Tree { get; init; }
    [JsonPropertyName("paths")] public required IReadOnlyList<string> Paths { get; init; }
    [JsonPropertyName("hostname")] public string Hostname { get; init; } = "";
    [JsonPropertyName("username")] public string Username { get; init; } = "";
    [JsonPropertyName("uid")] public uint Uid { get; init; }
    [JsonPropertyName("gid")] public uint Gid { get; init; }
    [JsonPropertyName("tags")] public IReadOnlyList<string> Tags { get; init; } = [];
    [JsonPropertyName("parent")] public string? Parent { get; init; }
    [JsonPropertyName("excludes")] public IReadOnlyList<string> Excludes { get; init; } = [];
    [JsonPropertyName("program_version")] public string ProgramVersion { get; init; } = "";
    [JsonPropertyName("summary")] public SnapshotSummary? Summary { get; init; }

    /// <summary>
    /// The id of the snapshot this one was derived from by <c>repair snapshots</c> or <c>copy</c> (hex), or absent for
    /// a snapshot written by a backup. It is the snapshot's persistent identity: a derived snapshot keeps the
    /// original's value, so a repaired or copied snapshot is still recognised by <c>copy</c> as already present.
    /// An optional field added within format version 1 (older readers skip it).
    /// </summary>
    [JsonPropertyName("original")] public string? Original { get; init; }

    /// <summary>
    /// Present on image snapshots (a disk, partition or image file backed up in fixed-size blocks), absent on file
    /// snapshots. An optional field added within format version 1 (older readers skip it); see
    /// docs/design/repository-format.md, "Image snapshots".
    /// </summary>
    [JsonPropertyName("image")] public ImageSummary? Image { get; init; }

    [JsonIgnore] public ObjectId TreeId => ObjectId.Parse(Tree);

    public byte[] Serialize() => JsonSerializer.SerializeToUtf8Bytes(this, RepositoryJson.Default.Snapshot);

    public static Snapshot Parse(ReadOnlySpan<byte> json, string name)
    {
        Snapshot? s;
        try
        {
            s = JsonSerializer.Deserialize(json, RepositoryJson.Default.Snapshot);
        }
        catch (JsonException e)
        {
            throw new HavenException(ErrorCode.Corrupt, $"{name} is damaged: {e.Message}", "run 'haven repair snapshots'", e);
        }

        if (s is null || !ObjectId.TryParse(s.Tree, out _))
        {
            throw new HavenException(ErrorCode.Corrupt, $"{name} is damaged: it names no valid tree", "run 'haven repair snapshots'");
        }

        if (s.Version > CurrentVersion)
        {
            throw new HavenException(ErrorCode.UnsupportedFormat, $"{name} has version {s.Version}; this Haven reads up to {CurrentVersion}", "upgrade Haven");
        }

        return s;
    }
}

/// <summary>A lock file's content (sealed, <c>locks/&lt;sha256&gt;</c>).</summary>
public sealed record LockInfo
{
    [JsonPropertyName("time")] public DateTimeOffset Time { get; init; }
    [JsonPropertyName("exclusive")] public bool Exclusive { get; init; }
    [JsonPropertyName("hostname")] public string Hostname { get; init; } = "";
    [JsonPropertyName("username")] public string Username { get; init; } = "";
    [JsonPropertyName("pid")] public int Pid { get; init; }
    [JsonPropertyName("purpose")] public string Purpose { get; init; } = "";
}

[JsonSourceGenerationOptions(WriteIndented = false, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(RepositoryConfig))]
[JsonSerializable(typeof(Snapshot))]
[JsonSerializable(typeof(SnapshotSummary))]
[JsonSerializable(typeof(List<Snapshot>))]
[JsonSerializable(typeof(LockInfo))]
[JsonSerializable(typeof(Crypto.KeyFile))]
[JsonSerializable(typeof(Crypto.MasterKeyData))]
public sealed partial class RepositoryJson : JsonSerializerContext;
