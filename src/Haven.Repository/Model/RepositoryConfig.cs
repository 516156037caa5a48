using System.Text.Json;
using System.Text.Json.Serialization;
using Haven.Core;
using Haven.Repository.Chunking;

namespace Haven.Repository.Model;

/// <summary>
/// The repository's <c>config</c> file: plaintext JSON, so that a version check and the repository id need no
/// password. It holds no secret; sizes in it are validated before use.
/// </summary>
public sealed record RepositoryConfig
{
    /// <summary>The format version this build writes and the newest it reads.</summary>
    public const int CurrentVersion = 1;

    /// <summary>16 MiB packs: few enough objects for S3 listings and requests, small enough to repack cheaply.</summary>
    public const int DefaultPackSize = 16 * 1024 * 1024;

    [JsonPropertyName("version")] public int Version { get; init; } = CurrentVersion;

    [JsonPropertyName("id")] public required string Id { get; init; }

    [JsonPropertyName("created")] public DateTimeOffset Created { get; init; }

    [JsonPropertyName("chunker_min")] public int ChunkerMin { get; init; }

    [JsonPropertyName("chunker_avg")] public int ChunkerAverage { get; init; }

    [JsonPropertyName("chunker_max")] public int ChunkerMax { get; init; }

    [JsonPropertyName("pack_size")] public int PackSize { get; init; } = DefaultPackSize;

    /// <summary>zstd level for new data; 0 turns compression off.</summary>
    [JsonPropertyName("compression")] public int Compression { get; init; } = 3;

    [JsonIgnore] public ChunkerParameters Chunker => new(ChunkerMin, ChunkerAverage, ChunkerMax);

    public static RepositoryConfig Create(string id, DateTimeOffset now, ChunkerParameters chunker, int compression) => new()
    {
        Id = id,
        Created = now,
        ChunkerMin = chunker.MinSize,
        ChunkerAverage = chunker.AverageSize,
        ChunkerMax = chunker.MaxSize,
        Compression = compression,
    };

    public byte[] Serialize() => JsonSerializer.SerializeToUtf8Bytes(this, RepositoryJson.Default.RepositoryConfig);

    public static RepositoryConfig Parse(ReadOnlySpan<byte> bytes, string location)
    {
        RepositoryConfig? config;
        int version;
        try
        {
            // Read the version on its own first: a newer format may not parse as this one.
            using var doc = JsonDocument.Parse(bytes.ToArray());
            version = doc.RootElement.TryGetProperty("version", out var v) && v.TryGetInt32(out int n) ? n : -1;
            if (version > CurrentVersion)
            {
                throw new HavenException(ErrorCode.UnsupportedFormat,
                    $"the repository at {location} has format version {version}; this Haven reads versions up to {CurrentVersion}",
                    "upgrade Haven to a version that knows this format");
            }

            config = JsonSerializer.Deserialize(bytes, RepositoryJson.Default.RepositoryConfig);
        }
        catch (JsonException e)
        {
            throw new HavenException(ErrorCode.Corrupt, $"the config file of the repository at {location} is damaged: {e.Message}",
                "restore the config file from a copy of the repository", e);
        }

        if (config is null || version < 1)
        {
            throw new HavenException(ErrorCode.Corrupt, $"the config file of the repository at {location} has no valid version");
        }

        config.Chunker.Validate();
        if (config.PackSize < 1024 * 1024 || config.PackSize > 512 * 1024 * 1024 || config.Compression < 0 || config.Compression > 19)
        {
            throw new HavenException(ErrorCode.Corrupt, $"the config file of the repository at {location} has invalid pack size or compression level");
        }

        return config;
    }
}
