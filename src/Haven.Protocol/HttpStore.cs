using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Runtime.CompilerServices;
using System.Text.Json;
using Haven.Core;
using Haven.Storage;

namespace Haven.Protocol;

/// <summary>
/// A repository hosted by a Haven server, as a store (<see cref="IStore"/>) over HTTPS: files under
/// <c>…/repository/files/{folder}/{name}</c> (GET, ranged GET, HEAD, PUT, DELETE; GET of a folder lists it), and the
/// tenant's blob catalog under <c>…/repository/catalog</c> (<see cref="IChunkCatalog"/>). Agents reach their tenant's
/// repository under <c>/api/v1/agent/</c> with their certificate and may only add files (and remove their own locks);
/// administrators reach it under <c>/api/v1/tenants/{id}/</c> with their token.
/// <para>
/// The connection is made on first use (fetching and checking the CA, and for administrators finding the tenant),
/// so opening the store costs nothing and its errors come out of the first call as store errors.
/// </para>
/// Error mapping: 404 NotFound, 401/403 AccessDenied, 507 NoSpace (the tenant's quota), 408/429/5xx and network
/// failures Transient, anything else Permanent. Thread-safe.
/// </summary>
public sealed class HttpStore : IStore, IChunkCatalog
{
    /// <summary>Blob ids per catalog request, both ways: 64 hex digits each, about 700 KB of JSON.</summary>
    public const int CatalogBatch = 10_000;

    private readonly Func<CancellationToken, Task<(ApiClient Api, string BasePath)>> _connect;
    private readonly SemaphoreSlim _connecting = new(1, 1);
    private Connection? _connection;

    /// <summary>A class, not a tuple: it is read without the lock, and a reference is published whole.</summary>
    private sealed record Connection(ApiClient Api, string BasePath);

    /// <param name="location">For messages: where the repository is (no secrets).</param>
    /// <param name="connect">Makes the API client and returns it with the repository's base path (ending in "/").</param>
    /// <param name="ownsClient">Dispose the API client with the store (false when the caller goes on using it).</param>
    public HttpStore(string location, Func<CancellationToken, Task<(ApiClient Api, string BasePath)>> connect, bool ownsClient = true)
    {
        Location = location;
        _connect = connect;
        _ownsClient = ownsClient;
    }

    private readonly bool _ownsClient;

    /// <summary>The repository of the agent's own tenant, under /api/v1/agent/repository/.</summary>
    public const string AgentBasePath = "api/v1/agent/repository/";

    /// <summary>A tenant's repository for administrators.</summary>
    public static string TenantBasePath(string tenantId) => $"api/v1/tenants/{Uri.EscapeDataString(tenantId)}/repository/";

    /// <summary>The URL path segment of a kind of file.</summary>
    public static string FolderName(FileKind kind) => kind == FileKind.Config ? "config" : StoreLayout.FolderOf(kind);

    public static bool TryParseFolder(string folder, out FileKind kind)
    {
        foreach (var k in Enum.GetValues<FileKind>())
        {
            if (FolderName(k) == folder)
            {
                kind = k;
                return true;
            }
        }

        kind = default;
        return false;
    }

    public string Location { get; }

    public IChunkCatalog? Catalog => this;

    public int MaxBatch => CatalogBatch;

    private async Task<(ApiClient Api, string BasePath)> ConnectionAsync(CancellationToken ct)
    {
        if (Volatile.Read(ref _connection) is { } c)
        {
            return (c.Api, c.BasePath);
        }

        await _connecting.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            if (_connection is null)
            {
                try
                {
                    var (api, basePath) = await _connect(ct).ConfigureAwait(false);
                    Volatile.Write(ref _connection, new Connection(api, basePath));
                }
                catch (HavenException e) when (e.Code == ErrorCode.Unavailable)
                {
                    // As a store error, so the retry wrapper dials again; every other refusal (wrong fingerprint,
                    // unknown tenant) reaches the user as it is, with its own exit code.
                    throw new StoreException(StoreErrorKind.Transient, e.Message + (e.Hint is null ? "" : $" ({e.Hint})"), e);
                }
            }

            return (_connection!.Api, _connection.BasePath);
        }
        finally
        {
            _connecting.Release();
        }
    }

    private static string FilePath(string basePath, StoreHandle handle)
    {
        StoreLayout.ValidateName(handle);
        return $"{basePath}files/{FolderName(handle.Kind)}/{handle.Name}";
    }

    public async Task PutAsync(StoreHandle handle, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        var (api, basePath) = await ConnectionAsync(cancellationToken).ConfigureAwait(false);
        using var content = new ReadOnlyMemoryContent(data);
        content.Headers.ContentType = new MediaTypeHeaderValue("application/octet-stream");
        using var response = await SendAsync(api, HttpMethod.Put, FilePath(basePath, handle), content, null, handle, cancellationToken).ConfigureAwait(false);
    }

    public async Task PutFileAsync(StoreHandle handle, string path, CancellationToken cancellationToken)
    {
        var (api, basePath) = await ConnectionAsync(cancellationToken).ConfigureAwait(false);
        await using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.Asynchronous | FileOptions.SequentialScan);
        using var content = new StreamContent(file, 256 * 1024);
        content.Headers.ContentType = new MediaTypeHeaderValue("application/octet-stream");
        content.Headers.ContentLength = file.Length;
        using var response = await SendAsync(api, HttpMethod.Put, FilePath(basePath, handle), content, null, handle, cancellationToken).ConfigureAwait(false);
    }

    public async Task<byte[]> GetAsync(StoreHandle handle, CancellationToken cancellationToken)
    {
        var (api, basePath) = await ConnectionAsync(cancellationToken).ConfigureAwait(false);
        using var response = await SendAsync(api, HttpMethod.Get, FilePath(basePath, handle), null, null, handle, cancellationToken).ConfigureAwait(false);
        return await ReadBodyAsync(() => response.Content.ReadAsByteArrayAsync(cancellationToken)).ConfigureAwait(false);
    }

    public async Task ReadRangeAsync(StoreHandle handle, long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        if (buffer.Length == 0)
        {
            if (await StatAsync(handle, cancellationToken).ConfigureAwait(false) is not { } info)
            {
                throw StoreException.NotFound(handle, Location);
            }

            if (offset > info.Size)
            {
                throw new StoreException(StoreErrorKind.Permanent, $"{handle} in {Location} has {info.Size} bytes; offset {offset} is past its end");
            }

            return;
        }

        var (api, basePath) = await ConnectionAsync(cancellationToken).ConfigureAwait(false);
        var range = new RangeHeaderValue(offset, offset + buffer.Length - 1);
        using var response = await SendAsync(api, HttpMethod.Get, FilePath(basePath, handle), null, range, handle, cancellationToken).ConfigureAwait(false);
        if (response.StatusCode != HttpStatusCode.PartialContent || response.Content.Headers.ContentLength != buffer.Length)
        {
            throw new StoreException(StoreErrorKind.Permanent, $"the server answered a range of {buffer.Length} bytes of {handle} with {(int)response.StatusCode} and {response.Content.Headers.ContentLength} bytes");
        }

        await ReadBodyAsync(async () =>
        {
            await using var stream = await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
            await stream.ReadExactlyAsync(buffer, cancellationToken).ConfigureAwait(false);
            return 0;
        }).ConfigureAwait(false);
    }

    public async IAsyncEnumerable<StoreFileInfo> ListAsync(FileKind kind, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var (api, basePath) = await ConnectionAsync(cancellationToken).ConfigureAwait(false);
        using var response = await SendAsync(api, HttpMethod.Get, $"{basePath}files/{FolderName(kind)}", null, null, null, cancellationToken).ConfigureAwait(false);
        Stream stream = await ReadBodyAsync(() => response.Content.ReadAsStreamAsync(cancellationToken)).ConfigureAwait(false);
        await using (stream.ConfigureAwait(false))
        {
            var items = JsonSerializer.DeserializeAsyncEnumerable<RepositoryFileInfo>(stream, ProtocolJson.Options, cancellationToken);
            var e = items.GetAsyncEnumerator(cancellationToken);
            try
            {
                while (true)
                {
                    RepositoryFileInfo? item;
                    try
                    {
                        if (!await e.MoveNextAsync().ConfigureAwait(false))
                        {
                            break;
                        }

                        item = e.Current;
                    }
                    catch (Exception ex) when (ex is IOException or HttpRequestException)
                    {
                        throw new StoreException(StoreErrorKind.Transient, $"the listing of {FolderName(kind)} from {Location} broke off: {ex.Message}", ex);
                    }
                    catch (JsonException ex)
                    {
                        throw new StoreException(StoreErrorKind.Permanent, $"the server sent a malformed listing of {FolderName(kind)}: {ex.Message}", ex);
                    }

                    if (item is null || !StoreLayout.IsValidName(item.Name) && !(kind == FileKind.Config && item.Name == "config"))
                    {
                        continue;
                    }

                    yield return new StoreFileInfo(new StoreHandle(kind, item.Name), item.Size);
                }
            }
            finally
            {
                await e.DisposeAsync().ConfigureAwait(false);
            }
        }
    }

    public async Task<StoreFileInfo?> StatAsync(StoreHandle handle, CancellationToken cancellationToken)
    {
        var (api, basePath) = await ConnectionAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            using var response = await SendAsync(api, HttpMethod.Head, FilePath(basePath, handle), null, null, handle, cancellationToken).ConfigureAwait(false);
            return new StoreFileInfo(handle, response.Content.Headers.ContentLength ?? 0);
        }
        catch (StoreException e) when (e.Kind == StoreErrorKind.NotFound)
        {
            return null;
        }
    }

    public async Task DeleteAsync(StoreHandle handle, CancellationToken cancellationToken)
    {
        var (api, basePath) = await ConnectionAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            using var response = await SendAsync(api, HttpMethod.Delete, FilePath(basePath, handle), null, null, handle, cancellationToken).ConfigureAwait(false);
        }
        catch (StoreException e) when (e.Kind == StoreErrorKind.NotFound)
        {
            // Deleting a missing file succeeds.
        }
    }

    /// <summary>One request: callers split their ids into batches of <see cref="MaxBatch"/> (the contract of <see cref="IChunkCatalog"/>).</summary>
    public async Task<IReadOnlySet<ObjectId>> FindKnownAsync(IReadOnlyList<ObjectId> ids, CancellationToken cancellationToken)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan(ids.Count, CatalogBatch);
        var (api, basePath) = await ConnectionAsync(cancellationToken).ConfigureAwait(false);
        using var content = JsonContent.Create(new CatalogQuery(ids.Select(id => id.ToString()).ToList()), options: ProtocolJson.Options);
        using var response = await SendAsync(api, HttpMethod.Post, basePath + "catalog/known", content, null, null, cancellationToken).ConfigureAwait(false);
        var answer = await ReadBodyAsync(() => response.Content.ReadFromJsonAsync<CatalogAnswer>(ProtocolJson.Options, cancellationToken)).ConfigureAwait(false);
        var known = new HashSet<ObjectId>();
        foreach (var hex in answer?.Known ?? [])
        {
            if (ObjectId.TryParse(hex, out var id))
            {
                known.Add(id);
            }
        }

        return known;
    }

    public async Task RegisterAsync(IReadOnlyList<CatalogPack> packs, CancellationToken cancellationToken)
    {
        var (api, basePath) = await ConnectionAsync(cancellationToken).ConfigureAwait(false);
        var batch = new List<CatalogPackInfo>();
        int ids = 0;
        foreach (var pack in packs)
        {
            if (batch.Count > 0 && ids + pack.Blobs.Count > CatalogBatch)
            {
                await SendRegistrationAsync(batch).ConfigureAwait(false);
                batch.Clear();
                ids = 0;
            }

            batch.Add(new CatalogPackInfo(pack.Pack.ToString(), pack.Blobs.Select(b => b.ToString()).ToList()));
            ids += pack.Blobs.Count;
        }

        if (batch.Count > 0)
        {
            await SendRegistrationAsync(batch).ConfigureAwait(false);
        }

        async Task SendRegistrationAsync(List<CatalogPackInfo> items)
        {
            using var content = JsonContent.Create(new CatalogRegistration(items), options: ProtocolJson.Options);
            using var response = await SendAsync(api, HttpMethod.Post, basePath + "catalog/register", content, null, null, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Sends a request; answers that are not successes become <see cref="StoreException"/>s.</summary>
    private async Task<HttpResponseMessage> SendAsync(ApiClient api, HttpMethod method, string path, HttpContent? content, RangeHeaderValue? range, StoreHandle? handle, CancellationToken ct)
    {
        using var request = new HttpRequestMessage(method, path) { Content = content };
        request.Headers.Range = range;
        HttpResponseMessage response;
        try
        {
            response = await api.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, ct).ConfigureAwait(false);
        }
        catch (HttpRequestException e) when (api.PinFailure is { } pin)
        {
            throw new StoreException(StoreErrorKind.AccessDenied, $"{api.Server} is not the server the CA fingerprint names: {pin}", e);
        }
        catch (HttpRequestException e)
        {
            throw new StoreException(StoreErrorKind.Transient, $"cannot reach the Haven server at {api.Server}: {ApiClient.Describe(e)}", e);
        }
        catch (TaskCanceledException e) when (!ct.IsCancellationRequested)
        {
            throw new StoreException(StoreErrorKind.Transient, $"the Haven server at {api.Server} did not answer {method} {path} in time", e);
        }

        if (response.IsSuccessStatusCode)
        {
            return response;
        }

        using (response)
        {
            string? message = null;
            if (method != HttpMethod.Head)
            {
                try
                {
                    var error = await response.Content.ReadFromJsonAsync<ApiError>(ProtocolJson.Options, ct).ConfigureAwait(false);
                    message = error is null ? null : error.Message + (error.Hint is null ? "" : $" ({error.Hint})");
                }
                catch (Exception e) when (e is JsonException or NotSupportedException or HttpRequestException or IOException)
                {
                    // Not one of ours: the status says enough.
                }
            }

            var kind = response.StatusCode switch
            {
                HttpStatusCode.NotFound => StoreErrorKind.NotFound,
                HttpStatusCode.Unauthorized or HttpStatusCode.Forbidden => StoreErrorKind.AccessDenied,
                HttpStatusCode.InsufficientStorage => StoreErrorKind.NoSpace,
                HttpStatusCode.RequestTimeout or HttpStatusCode.TooManyRequests => StoreErrorKind.Transient,
                >= HttpStatusCode.InternalServerError => StoreErrorKind.Transient,
                _ => StoreErrorKind.Permanent,
            };
            if (kind == StoreErrorKind.NotFound && handle is { } h)
            {
                throw StoreException.NotFound(h, Location);
            }

            throw new StoreException(kind, $"{Location}: {method} {(handle?.ToString() ?? path)} failed: {message ?? $"{(int)response.StatusCode} {response.ReasonPhrase}"}");
        }
    }

    /// <summary>Reads a response body; a connection lost on the way is transient.</summary>
    private async Task<T> ReadBodyAsync<T>(Func<Task<T>> read)
    {
        try
        {
            return await read().ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or HttpRequestException)
        {
            throw new StoreException(StoreErrorKind.Transient, $"the answer from {Location} broke off: {e.Message}", e);
        }
        catch (JsonException e)
        {
            throw new StoreException(StoreErrorKind.Permanent, $"the server sent malformed JSON: {e.Message}", e);
        }
    }

    public ValueTask DisposeAsync()
    {
        if (_ownsClient)
        {
            _connection?.Api.Dispose();
        }

        _connecting.Dispose();
        return ValueTask.CompletedTask;
    }
}
