namespace Haven.Storage;

/// <summary>How a caller should treat a store error.</summary>
public enum StoreErrorKind
{
    /// <summary>Retrying will not help (bad credentials, malformed request, bucket missing).</summary>
    Permanent,

    /// <summary>May succeed when retried (timeouts, connection resets, 5xx, throttling).</summary>
    Transient,

    /// <summary>The file does not exist.</summary>
    NotFound,

    /// <summary>The destination has no room left.</summary>
    NoSpace,

    /// <summary>The store refused access.</summary>
    AccessDenied,
}

public sealed class StoreException : Exception
{
    public StoreException(StoreErrorKind kind, string message, Exception? inner = null)
        : base(message, inner)
    {
        Kind = kind;
    }

    public StoreErrorKind Kind { get; }

    public bool IsTransient => Kind == StoreErrorKind.Transient;

    public static StoreException NotFound(StoreHandle handle, string location) =>
        new(StoreErrorKind.NotFound, $"{StoreLayout.PathOf(handle)} does not exist in {location}");
}
