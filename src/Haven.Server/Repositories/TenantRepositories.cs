using System.Collections.Concurrent;
using Haven.Core;
using Haven.Storage;
using Haven.Storage.S3;

namespace Haven.Server.Repositories;

/// <summary>
/// Where the server keeps its tenants' repositories: one store per tenant, under a root that is a local folder
/// (the default: <c>DATA/repositories/TENANT-ID</c>) or an S3 URL (<c>s3:…/bucket/prefix</c>, one prefix per tenant).
/// Stores are made on first use and kept; every one is wrapped in retries.
/// </summary>
public sealed class TenantRepositories : IAsyncDisposable
{
    private readonly ConcurrentDictionary<string, IStore> _stores = new();
    private readonly S3StoreOptions? _s3;
    private readonly string? _folder;

    public TenantRepositories(string root, string dataDirectory)
    {
        Root = root;
        TempFolder = Path.Combine(dataDirectory, "tmp");
        Directory.CreateDirectory(TempFolder);
        if (S3StoreOptions.IsS3Url(root))
        {
            _s3 = S3StoreOptions.Parse(root);
        }
        else
        {
            _folder = Path.GetFullPath(root);
            Directory.CreateDirectory(_folder);
        }

        // Uploads of a server that was killed leave their temporary files behind.
        foreach (var stale in Directory.EnumerateFiles(TempFolder, "upload-*.tmp"))
        {
            try
            {
                File.Delete(stale);
            }
            catch (IOException)
            {
            }
        }
    }

    /// <summary>The root as configured (a folder or an S3 URL), for messages; an S3 URL carries no secret.</summary>
    public string Root { get; }

    /// <summary>Where uploads are received before they go into a store.</summary>
    public string TempFolder { get; }

    /// <summary>The store of <paramref name="tenantId"/> (a hex id, checked by the caller).</summary>
    public IStore For(string tenantId)
    {
        if (tenantId.Length is < 16 or > 64 || !tenantId.All(char.IsAsciiHexDigitLower))
        {
            throw new HavenException(ErrorCode.Usage, $"'{tenantId}' is not a tenant id");
        }

        return _stores.GetOrAdd(tenantId, id =>
        {
            IStore inner = _s3 is { } s3
                ? new S3Store(s3 with { Prefix = s3.Prefix.Length == 0 ? id : $"{s3.Prefix}/{id}" })
                : new LocalStore(Path.Combine(_folder!, id));
            return new RetryingStore(inner, new RetryOptions());
        });
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var store in _stores.Values)
        {
            await store.DisposeAsync().ConfigureAwait(false);
        }
    }
}
